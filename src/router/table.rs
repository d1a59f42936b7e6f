//! The route table of one shard (ejabberd's route table, `find_routes`): which kind of destination owns
//! each domain. The served hosts are local routes (the session manager and the local router), checked
//! first by a short scan because nearly every stanza is for one of them; services that modules registered
//! and connected external components follow in a map. Later rows: cluster peers and the s2s manager.
//! Every shard holds a copy; services are installed by the module framework on each shard, component
//! routes follow the server-wide registry over the mesh.

use std::collections::HashMap;

use crate::modules::ServiceHandler;
use crate::sink::SinkId;

/// Who owns a domain.
#[derive(Clone)]
pub enum Route {
    /// A served virtual host: accounts and the server itself.
    Local,
    /// A service a module registered (each shard has its own instance: no cross-core hop).
    Service(ServiceHandler),
    /// An external component, whose connection lives on `shard`.
    Component { shard: usize, sink: SinkId },
    /// An external component connected to another host of the cluster (`node` at `incarnation`), on its
    /// shard `shard`.
    Remote {
        node: std::sync::Arc<str>,
        incarnation: u64,
        shard: usize,
    },
}

pub struct RouteTable {
    hosts: Vec<String>,
    others: HashMap<String, Route>,
}

impl RouteTable {
    pub fn new(hosts: &[String]) -> RouteTable {
        RouteTable {
            hosts: hosts.to_vec(),
            others: HashMap::new(),
        }
    }

    /// The route of a (prepared) domain.
    pub fn lookup(&self, domain: &str) -> Option<Route> {
        if self.hosts.iter().any(|h| h == domain) {
            return Some(Route::Local);
        }
        self.others.get(domain).cloned()
    }

    pub fn is_local(&self, domain: &str) -> bool {
        self.hosts.iter().any(|h| h == domain)
    }

    /// Replaces the service routes with `services` (after modules started or stopped); component routes
    /// stay.
    pub fn set_services(&mut self, services: Vec<(String, ServiceHandler)>) {
        self.others.retain(|_, r| !matches!(r, Route::Service(_)));
        for (domain, handler) in services {
            self.others.insert(domain, Route::Service(handler));
        }
    }

    /// Installs (`Some`) or removes (`None`) the route of a component.
    pub fn set_component(&mut self, domain: &str, at: Option<(usize, SinkId)>) {
        match at {
            Some((shard, sink)) => {
                self.others
                    .insert(domain.to_string(), Route::Component { shard, sink });
            }
            None => {
                if matches!(self.others.get(domain), Some(Route::Component { .. })) {
                    self.others.remove(domain);
                }
            }
        }
    }

    /// Installs (`Some`) or removes (`None`) the route of a component on another host of the cluster. A
    /// component connected here keeps its local route.
    pub fn set_remote_component(
        &mut self,
        domain: &str,
        at: Option<(std::sync::Arc<str>, u64, usize)>,
    ) {
        match (at, self.others.get(domain)) {
            (_, Some(Route::Component { .. })) => {}
            (Some((node, incarnation, shard)), _) => {
                self.others.insert(
                    domain.to_string(),
                    Route::Remote {
                        node,
                        incarnation,
                        shard,
                    },
                );
            }
            (None, Some(Route::Remote { .. })) => {
                self.others.remove(domain);
            }
            (None, _) => {}
        }
    }

    /// Drops the routes to components of hosts for which `keep(node, incarnation)` is false (they left
    /// the cluster).
    pub fn retain_remote(&mut self, keep: impl Fn(&str, u64) -> bool) {
        self.others.retain(|_, r| match r {
            Route::Remote {
                node, incarnation, ..
            } => keep(node, *incarnation),
            _ => true,
        });
    }

    /// The components under `host` (`*.host`), sorted (with the services: the server's disco#items).
    pub fn components_under(&self, host: &str) -> Vec<String> {
        let suffix = format!(".{host}");
        let mut out: Vec<String> = self
            .others
            .iter()
            .filter(|(d, r)| {
                matches!(r, Route::Component { .. } | Route::Remote { .. }) && d.ends_with(&suffix)
            })
            .map(|(d, _)| d.clone())
            .collect();
        out.sort();
        out
    }
}

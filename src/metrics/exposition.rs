//! The Prometheus text exposition format (version 0.0.4) of every shard's [`Snapshot`] and the process's
//! figures: what `GET /metrics` answers. Written by hand because the figures are gathered as plain
//! values at scrape time; a registry crate would want them kept in its own (atomic) metric types on the
//! hot path. Every series of a shard carries a `shard` label; the mesh's queue depth between two shards is
//! what one handed to the other's channel minus what the other took off it.

use std::fmt::Write;

use super::latency::Stage;
use super::{ClusterFigures, ConnKind, ProcessFigures, STANZA_KINDS, Snapshot};

/// Histogram buckets in seconds: from a microsecond (a parse) to ten seconds (a stalled store).
const BUCKETS_SECONDS: [f64; 22] = [
    1e-6, 2.5e-6, 5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 0.01, 0.025,
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

struct Out {
    text: String,
}

impl Out {
    fn header(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.text, "# HELP rjabberd_{name} {help}");
        let _ = writeln!(self.text, "# TYPE rjabberd_{name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl std::fmt::Display) {
        let _ = write!(self.text, "rjabberd_{name}");
        if !labels.is_empty() {
            self.text.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.text.push(',');
                }
                let _ = write!(self.text, "{k}=\"");
                escape_label(&mut self.text, v);
                self.text.push('"');
            }
            self.text.push('}');
        }
        let _ = writeln!(self.text, " {value}");
    }

    /// A series per shard: `value(snapshot)` under `extra` labels.
    fn per_shard<V: std::fmt::Display>(
        &mut self,
        name: &str,
        shards: &[Snapshot],
        extra: &[(&str, &str)],
        value: impl Fn(&Snapshot) -> V,
    ) {
        for s in shards {
            let shard = s.shard.to_string();
            let mut labels = vec![("shard", shard.as_str())];
            labels.extend_from_slice(extra);
            self.sample(name, &labels, value(s));
        }
    }
}

/// `\`, `"` and newlines escaped, as the format asks of label values.
fn escape_label(out: &mut String, v: &str) {
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// The exposition of every shard and of the process.
pub fn render(shards: &[Snapshot], process: &ProcessFigures) -> String {
    let mut o = Out {
        text: String::with_capacity(16 * 1024),
    };
    o.header(
        "uptime_seconds",
        "gauge",
        "Seconds since the server started.",
    );
    o.sample("uptime_seconds", &[], format!("{:.3}", process.uptime_secs));
    o.header("shards", "gauge", "Shards (executor threads) running.");
    o.sample("shards", &[], process.shards);

    o.header(
        "connections",
        "gauge",
        "Connections open, by kind (c2s includes streams not yet authenticated).",
    );
    for kind in ConnKind::ALL {
        o.per_shard("connections", shards, &[("kind", kind.label())], |s| {
            s.open[kind as usize].max(0)
        });
    }
    o.header(
        "connections_accepted_total",
        "counter",
        "Connections accepted by this shard's listeners, by kind.",
    );
    for kind in ConnKind::ALL {
        o.per_shard(
            "connections_accepted_total",
            shards,
            &[("kind", kind.label())],
            |s| s.accepted[kind as usize],
        );
    }
    o.header(
        "connections_refused_total",
        "counter",
        "Connections refused at accept because the shard's connection cap was reached.",
    );
    o.per_shard("connections_refused_total", shards, &[], |s| {
        s.refused_at_cap
    });
    o.header(
        "sessions",
        "gauge",
        "Sessions by kind: bound client resources whose account lives on the shard, components connected to it.",
    );
    o.per_shard("sessions", shards, &[("kind", "c2s")], |s| s.sessions);
    o.per_shard("sessions", shards, &[("kind", "component")], |s| {
        s.components
    });
    o.header(
        "accounts_online",
        "gauge",
        "Accounts with at least one session on the shard.",
    );
    o.per_shard("accounts_online", shards, &[], |s| s.accounts);
    if shards.iter().any(|s| s.cluster.is_some()) {
        cluster(&mut o, shards);
    }

    o.header(
        "logins_total",
        "counter",
        "Successful SASL authentications, by mechanism.",
    );
    for s in shards {
        let shard = s.shard.to_string();
        for (mech, ok, _) in &s.logins {
            o.sample(
                "logins_total",
                &[("shard", &shard), ("mechanism", mech)],
                ok,
            );
        }
    }
    o.header(
        "login_failures_total",
        "counter",
        "Failed SASL authentications, by mechanism.",
    );
    for s in shards {
        let shard = s.shard.to_string();
        for (mech, _, failed) in &s.logins {
            o.sample(
                "login_failures_total",
                &[("shard", &shard), ("mechanism", mech)],
                failed,
            );
        }
    }

    o.header(
        "stanzas_in_total",
        "counter",
        "Stanzas read from clients and components, by kind.",
    );
    for (i, kind) in STANZA_KINDS.iter().enumerate() {
        o.per_shard("stanzas_in_total", shards, &[("kind", kind)], |s| {
            s.stanzas_in[i]
        });
    }
    o.header(
        "stanzas_out_total",
        "counter",
        "Stanzas written to clients and components by the forwarding writer, by kind (stored \
         messages replayed and stream framing count in bytes only).",
    );
    for (i, kind) in STANZA_KINDS.iter().enumerate() {
        o.per_shard("stanzas_out_total", shards, &[("kind", kind)], |s| {
            s.stanzas_out[i]
        });
    }
    o.header(
        "bytes_in_total",
        "counter",
        "Bytes read from sockets (TLS records included).",
    );
    o.per_shard("bytes_in_total", shards, &[], |s| s.bytes_in);
    o.header(
        "bytes_out_total",
        "counter",
        "Bytes written to sockets (TLS records included).",
    );
    o.per_shard("bytes_out_total", shards, &[], |s| s.bytes_out);

    o.header(
        "mesh_queue_depth",
        "gauge",
        "Messages in the mesh channel from one shard to another (handed over, not yet taken off).",
    );
    for from in shards {
        for to in shards {
            if from.shard == to.shard {
                continue;
            }
            let sent = from.mesh_sent.get(to.shard).copied().unwrap_or(0);
            let taken = to.mesh_received.get(from.shard).copied().unwrap_or(0);
            let (f, t) = (from.shard.to_string(), to.shard.to_string());
            // The two counts are read a moment apart, so the difference can dip below zero.
            o.sample(
                "mesh_queue_depth",
                &[("shard", &f), ("peer", &t)],
                sent.saturating_sub(taken),
            );
        }
    }
    o.header(
        "mesh_spill_waiting",
        "gauge",
        "Messages waiting in a shard's spill queue for a full channel to a peer.",
    );
    for s in shards {
        let shard = s.shard.to_string();
        for (peer, n) in s.mesh_spill_waiting.iter().enumerate() {
            if peer != s.shard {
                let peer = peer.to_string();
                o.sample(
                    "mesh_spill_waiting",
                    &[("shard", &shard), ("peer", &peer)],
                    n,
                );
            }
        }
    }
    o.header(
        "mesh_sent_total",
        "counter",
        "Messages handed to other shards' channels.",
    );
    o.per_shard("mesh_sent_total", shards, &[], |s| {
        s.mesh_sent.iter().sum::<u64>()
    });
    o.header(
        "mesh_spilled_total",
        "counter",
        "Messages that found a peer's channel full and waited in the spill queue.",
    );
    o.per_shard("mesh_spilled_total", shards, &[], |s| s.mesh_spilled);
    o.header(
        "mesh_refused_total",
        "counter",
        "Messages refused at the spill queue's cap (their senders got resource-constraint).",
    );
    o.per_shard("mesh_refused_total", shards, &[], |s| s.mesh_refused);

    o.header(
        "store_queue_depth",
        "gauge",
        "Store queries waiting for a worker thread (one queue for all shards).",
    );
    o.sample("store_queue_depth", &[], process.store_queue_depth);
    o.header(
        "store_queries_total",
        "counter",
        "Store queries a shard made.",
    );
    o.per_shard("store_queries_total", shards, &[], |s| s.store_queries);
    o.header(
        "store_errors_total",
        "counter",
        "Store queries that failed.",
    );
    o.per_shard("store_errors_total", shards, &[], |s| s.store_errors);

    o.header(
        "iq_total",
        "counter",
        "IQ requests handled by a module, by namespace.",
    );
    for s in shards {
        let shard = s.shard.to_string();
        for (ns, handled, _) in &s.iqs {
            o.sample("iq_total", &[("shard", &shard), ("namespace", ns)], handled);
        }
    }
    o.header(
        "iq_errors_total",
        "counter",
        "IQ requests a module answered with an error, by namespace.",
    );
    for s in shards {
        let shard = s.shard.to_string();
        for (ns, _, errors) in &s.iqs {
            o.sample(
                "iq_errors_total",
                &[("shard", &shard), ("namespace", ns)],
                errors,
            );
        }
    }

    o.header(
        "latency_sample_every",
        "gauge",
        "Per-stage latency follows one stanza in this many (0: off).",
    );
    o.per_shard("latency_sample_every", shards, &[], |s| s.sample_every);
    o.header(
        "stanza_stage_seconds",
        "histogram",
        "Time sampled stanzas spent in each stage: parse, route, mesh, deliver, and total from the \
         socket read to the recipient's socket.",
    );
    for s in shards {
        for stage in Stage::ALL {
            if stage.of_stanzas() {
                histogram(
                    &mut o,
                    "stanza_stage_seconds",
                    s,
                    stage,
                    Some(stage.label()),
                );
            }
        }
    }
    o.header(
        "store_query_seconds",
        "histogram",
        "Store query time as the shard waits for it, the wait for a free worker included.",
    );
    for s in shards {
        histogram(&mut o, "store_query_seconds", s, Stage::Store, None);
    }
    o.header(
        "store_exec_seconds",
        "histogram",
        "Time a store worker spent on a query (the rest of store_query_seconds is the queue).",
    );
    for s in shards {
        histogram(&mut o, "store_exec_seconds", s, Stage::StoreExec, None);
    }

    o.header(
        "resident_memory_bytes",
        "gauge",
        "The process's resident set size.",
    );
    o.sample("resident_memory_bytes", &[], process.resident_bytes);
    if let (Some(c), Some(p)) = (
        process.allocator_committed_bytes,
        process.allocator_peak_committed_bytes,
    ) {
        o.header(
            "allocator_committed_bytes",
            "gauge",
            "Memory the allocator (mimalloc) has committed.",
        );
        o.sample("allocator_committed_bytes", &[], c);
        o.header(
            "allocator_peak_committed_bytes",
            "gauge",
            "The most memory the allocator (mimalloc) had committed at once.",
        );
        o.sample("allocator_peak_committed_bytes", &[], p);
    }
    o.text
}

/// The cluster's series (docs/cluster-protocol.md), on a host that is in one.
fn cluster(o: &mut Out, shards: &[Snapshot]) {
    fn of<V: Default>(s: &Snapshot, f: impl Fn(&ClusterFigures) -> V) -> V {
        s.cluster.as_ref().map(f).unwrap_or_default()
    }
    /// One sample per shard and peer host the shard links to.
    fn per_link<V: std::fmt::Display>(
        o: &mut Out,
        name: &str,
        shards: &[Snapshot],
        value: impl Fn(bool, u64, u64) -> V,
    ) {
        for s in shards {
            let shard = s.shard.to_string();
            for (peer, up, sent, acked) in s.cluster.iter().flat_map(|c| &c.links) {
                o.sample(
                    name,
                    &[("shard", &shard), ("peer", peer)],
                    value(*up, *sent, *acked),
                );
            }
        }
    }
    o.header(
        "cluster_epoch",
        "gauge",
        "The membership epoch the shard serves under (every host's shards agree once a change settled).",
    );
    o.per_shard("cluster_epoch", shards, &[], |s| of(s, |c| c.epoch));
    o.header(
        "cluster_members",
        "gauge",
        "Members of the cluster in the view the shard serves under.",
    );
    o.per_shard("cluster_members", shards, &[], |s| of(s, |c| c.members));
    o.header(
        "cluster_serving",
        "gauge",
        "1 while the host serves as a member, 0 while it is out (fenced, cut off, leaving).",
    );
    o.per_shard("cluster_serving", shards, &[], |s| {
        of(s, |c| u8::from(c.serving))
    });
    o.header(
        "cluster_presence_ledger_entries",
        "gauge",
        "Sessions of other hosts that sent this shard's accounts an available presence.",
    );
    o.per_shard("cluster_presence_ledger_entries", shards, &[], |s| {
        of(s, |c| c.ledger_entries)
    });
    o.header(
        "cluster_link_up",
        "gauge",
        "1 while the shard's link to the peer host is authenticated and connected.",
    );
    per_link(o, "cluster_link_up", shards, |up, _, _| u8::from(up));
    o.header(
        "cluster_link_frames_sent_total",
        "counter",
        "Data frames the shard handed to its link to the peer host (counted per link: a new link after a view change starts again).",
    );
    per_link(o, "cluster_link_frames_sent_total", shards, |_, sent, _| {
        sent
    });
    o.header(
        "cluster_link_frames_unacknowledged",
        "gauge",
        "Data frames the shard's link holds for the peer host, sent or not, until it acknowledges them.",
    );
    per_link(
        o,
        "cluster_link_frames_unacknowledged",
        shards,
        |_, sent, acked| sent.saturating_sub(acked),
    );
}

fn histogram(o: &mut Out, name: &str, s: &Snapshot, stage: Stage, label: Option<&str>) {
    let h = s.latency.get(stage);
    let shard = s.shard.to_string();
    let mut labels = vec![("shard", shard.as_str())];
    if let Some(l) = label {
        labels.push(("stage", l));
    }
    let bucket = format!("{name}_bucket");
    for le in BUCKETS_SECONDS {
        let upto = (le * 1e9) as u64;
        let count = if h.is_empty() {
            0
        } else {
            h.count_between(0, upto)
        };
        let le = le.to_string();
        let mut l = labels.clone();
        l.push(("le", &le));
        o.sample(&bucket, &l, count);
    }
    let mut l = labels.clone();
    l.push(("le", "+Inf"));
    o.sample(&bucket, &l, h.len());
    o.sample(
        &format!("{name}_sum"),
        &labels,
        format!("{:.9}", s.latency.sum_ns(stage) as f64 / 1e9),
    );
    o.sample(&format!("{name}_count"), &labels, h.len());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(text: &str, series: &str) -> Option<String> {
        text.lines()
            .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
            .map(|l| l[series.len() + 1..].to_string())
    }

    #[test]
    fn series_carry_the_shard_and_the_mesh_depth_is_sent_minus_taken() {
        let mut a = Snapshot {
            shard: 0,
            mesh_sent: vec![0, 7],
            mesh_received: vec![0, 2],
            ..Snapshot::default()
        };
        a.stanzas_in[0] = 5;
        a.logins.push(("SCRAM-SHA-1", 3, 1));
        let b = Snapshot {
            shard: 1,
            mesh_sent: vec![4, 0],
            mesh_received: vec![5, 0],
            ..Snapshot::default()
        };
        let text = render(&[a, b], &ProcessFigures::default());
        assert_eq!(
            value(
                &text,
                "rjabberd_stanzas_in_total{shard=\"0\",kind=\"message\"}"
            )
            .as_deref(),
            Some("5")
        );
        assert_eq!(
            value(&text, "rjabberd_mesh_queue_depth{shard=\"0\",peer=\"1\"}").as_deref(),
            Some("2")
        );
        // Shard 1 sent 4 that shard 0 took 2 of.
        assert_eq!(
            value(&text, "rjabberd_mesh_queue_depth{shard=\"1\",peer=\"0\"}").as_deref(),
            Some("2")
        );
        assert_eq!(
            value(
                &text,
                "rjabberd_login_failures_total{shard=\"0\",mechanism=\"SCRAM-SHA-1\"}"
            )
            .as_deref(),
            Some("1")
        );
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            assert!(line.starts_with("rjabberd_"), "{line}");
            let (_, v) = line.rsplit_once(' ').unwrap();
            assert!(v.parse::<f64>().is_ok(), "{line}");
        }
    }

    #[test]
    fn histograms_are_cumulative_with_an_infinite_bucket() {
        let mut s = Snapshot::default();
        s.latency.record(Stage::Deliver, 3_000); // 3 µs
        s.latency.record(Stage::Deliver, 2_000_000); // 2 ms
        let text = render(&[s], &ProcessFigures::default());
        let series = |le: &str| {
            value(
                &text,
                &format!(
                    "rjabberd_stanza_stage_seconds_bucket{{shard=\"0\",stage=\"deliver\",le=\"{le}\"}}"
                ),
            )
        };
        assert_eq!(series("0.000001").as_deref(), Some("0"));
        assert_eq!(series("0.000005").as_deref(), Some("1"));
        assert_eq!(series("0.0025").as_deref(), Some("2"));
        assert_eq!(series("+Inf").as_deref(), Some("2"));
        assert_eq!(
            value(
                &text,
                "rjabberd_stanza_stage_seconds_count{shard=\"0\",stage=\"deliver\"}"
            )
            .as_deref(),
            Some("2")
        );
    }

    #[test]
    fn label_values_are_escaped() {
        let mut out = String::new();
        escape_label(&mut out, "a\"b\\c\nd");
        assert_eq!(out, "a\\\"b\\\\c\\nd");
    }

    #[test]
    fn a_cluster_host_shows_its_view_links_and_ledger() {
        let mut a = Snapshot {
            shard: 0,
            ..Snapshot::default()
        };
        a.cluster = Some(crate::metrics::ClusterFigures {
            epoch: 7,
            members: 3,
            serving: true,
            ledger_entries: 4,
            links: vec![("n2".into(), true, 10, 8), ("n3".into(), false, 5, 5)],
        });
        let text = render(&[a], &ProcessFigures::default());
        for (series, want) in [
            ("rjabberd_cluster_epoch{shard=\"0\"}", "7"),
            ("rjabberd_cluster_members{shard=\"0\"}", "3"),
            ("rjabberd_cluster_serving{shard=\"0\"}", "1"),
            ("rjabberd_cluster_presence_ledger_entries{shard=\"0\"}", "4"),
            ("rjabberd_cluster_link_up{shard=\"0\",peer=\"n2\"}", "1"),
            ("rjabberd_cluster_link_up{shard=\"0\",peer=\"n3\"}", "0"),
            (
                "rjabberd_cluster_link_frames_sent_total{shard=\"0\",peer=\"n2\"}",
                "10",
            ),
            (
                "rjabberd_cluster_link_frames_unacknowledged{shard=\"0\",peer=\"n2\"}",
                "2",
            ),
        ] {
            assert_eq!(value(&text, series).as_deref(), Some(want), "{series}");
        }
        // A host that is not in a cluster has none of these series.
        let alone = render(&[Snapshot::default()], &ProcessFigures::default());
        assert!(!alone.contains("rjabberd_cluster"), "{alone}");
    }
}

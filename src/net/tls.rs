//! TLS for client connections: the certificate of every virtual host (loaded from the configured PEM
//! files, or generated self-signed at first start and kept under `data_dir/certs`), the rustls server
//! configurations (STARTTLS, and direct TLS with ALPN `xmpp-client` per XEP-0368), certificate choice by
//! SNI, and the channel-binding data SCRAM-PLUS needs. rustls is driven by the connection itself
//! ([`rustls::ServerConnection`] is sans-IO), so its state can move between shards with the connection.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use sha2::Digest;

use crate::config::Config;
use crate::proto::sasl::ChannelBindings;

/// ALPN protocol of XEP-0368 direct TLS for clients.
pub const ALPN_XMPP_CLIENT: &[u8] = b"xmpp-client";

/// Every host's certificate, by domain, with the first host as the fallback for clients without SNI.
#[derive(Debug)]
pub struct HostCertificates {
    by_host: HashMap<String, Arc<CertifiedKey>>,
    default: Arc<CertifiedKey>,
    /// RFC 5929 §4.1 `tls-server-end-point` data per host: SHA-256 of the leaf certificate (the hash
    /// for certificates signed with SHA-256, as generated ones are, and for MD5/SHA-1 ones).
    end_point: HashMap<String, Vec<u8>>,
    default_end_point: Vec<u8>,
}

impl ResolvesServerCert for HostCertificates {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let chosen = hello
            .server_name()
            .and_then(|n| self.by_host.get(&n.to_ascii_lowercase()))
            .unwrap_or(&self.default);
        Some(chosen.clone())
    }
}

impl HostCertificates {
    /// Loads or generates the certificate of every configured host.
    pub fn load(config: &Config) -> Result<HostCertificates, String> {
        let provider = rustls::crypto::ring::default_provider();
        let mut by_host = HashMap::new();
        let mut end_point = HashMap::new();
        let mut first = None;
        for host in &config.hosts {
            let name = host.name.get_ref().to_ascii_lowercase();
            let (chain, key) = match (&host.certificate, &host.key) {
                (Some(c), Some(k)) => load_pem(c, k)?,
                _ => load_or_generate(&name, &config.data_dir)?,
            };
            let leaf_hash = sha2::Sha256::digest(chain[0].as_ref()).to_vec();
            let key = provider
                .key_provider
                .load_private_key(key)
                .map_err(|e| format!("host {name}: unusable private key: {e}"))?;
            let certified = Arc::new(CertifiedKey::new(chain, key));
            first.get_or_insert_with(|| (certified.clone(), leaf_hash.clone()));
            by_host.insert(name.clone(), certified);
            end_point.insert(name, leaf_hash);
        }
        let (default, default_end_point) = first.ok_or("no hosts configured")?;
        Ok(HostCertificates {
            by_host,
            default,
            end_point,
            default_end_point,
        })
    }

    /// The server configuration for STARTTLS (`alpn` false) or direct TLS (`alpn` true).
    pub fn server_config(
        self: &Arc<Self>,
        alpn: bool,
        resumption: &crate::config::TlsConfig,
        cache: &Arc<dyn rustls::server::StoresServerSessions>,
        ticketer: &Option<Arc<dyn rustls::server::ProducesTickets>>,
    ) -> Arc<rustls::ServerConfig> {
        let mut cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .expect("ring supports TLS 1.2 and 1.3")
        .with_no_client_auth()
        .with_cert_resolver(self.clone());
        if alpn {
            cfg.alpn_protocols = vec![ALPN_XMPP_CLIENT.to_vec()];
        }
        // Channel binding with tls-exporter is only sound with the extended master secret in TLS 1.2,
        // which rustls requires by default.
        // Resumption: one session cache (and ticket key) for both listeners and every shard, so a client
        // resumes wherever SO_REUSEPORT puts its reconnection.
        cfg.session_storage = cache.clone();
        if let Some(t) = ticketer {
            cfg.ticketer = t.clone();
        }
        if resumption.session_cache_size == 0 && ticketer.is_none() {
            cfg.send_tls13_tickets = 0;
        }
        Arc::new(cfg)
    }

    /// The channel-binding data of an established connection.
    pub fn bindings(&self, conn: &rustls::ServerConnection) -> ChannelBindings {
        let exporter = conn
            .export_keying_material(vec![0u8; 32], b"EXPORTER-Channel-Binding", None)
            .ok();
        let end_point = conn
            .server_name()
            .and_then(|n| self.end_point.get(&n.to_ascii_lowercase()))
            .unwrap_or(&self.default_end_point)
            .clone();
        ChannelBindings {
            tls_exporter: exporter,
            tls_server_end_point: Some(end_point),
        }
    }
}

fn load_pem(
    cert: &Path,
    key: &Path,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), String> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| format!("{}: {e}", cert.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: {e}", cert.display()))?;
    if chain.is_empty() {
        return Err(format!("{}: no certificate in the file", cert.display()));
    }
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| format!("{}: {e}", key.display()))?;
    Ok((chain, key))
}

/// The generated certificate of `host` under `data_dir/certs`, made at first start.
fn load_or_generate(
    host: &str,
    data_dir: &Path,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), String> {
    let dir = data_dir.join("certs");
    let cert = dir.join(format!("{host}.crt"));
    let key = dir.join(format!("{host}.key"));
    if cert.exists() && key.exists() {
        return load_pem(&cert, &key);
    }
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let generated = rcgen::generate_simple_self_signed(vec![host.to_string()])
        .map_err(|e| format!("cannot generate a certificate for {host}: {e}"))?;
    std::fs::write(&cert, generated.cert.pem()).map_err(|e| format!("{}: {e}", cert.display()))?;
    write_private(&key, generated.signing_key.serialize_pem().as_bytes())?;
    log::info!(
        "generated a self-signed certificate for {host} in {}",
        cert.display()
    );
    load_pem(&cert, &key)
}

fn write_private(path: &Path, data: &[u8]) -> Result<(), String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    f.write_all(data)
        .map_err(|e| format!("{}: {e}", path.display()))
}

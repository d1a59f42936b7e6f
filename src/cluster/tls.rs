//! TLS on cluster links (docs/cluster-protocol.md §4): the two rustls configurations every link of the
//! host shares (TLS 1.3 only, each side presenting this host's certificate and trusting only the
//! cluster's own CA), loaded once at start with errors that name the file at fault; the rule that a
//! peer's certificate must name its node (a DNS subject alternative name equal to `cluster.node`); and
//! [`TlsConn`], one connection's rustls state driven by hand over byte slices, as the client streams do
//! in `net::driver`, so that the link code keeps its own socket and frame reader and only routes
//! bytes through it.

use std::io::{Read, Write};
use std::path::Path;
use std::sync::Arc;

use rustls::RootCertStore;
use rustls::client::{verify_server_cert_signed_by_trust_anchor, verify_server_name};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::{ParsedCertificate, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;

/// The exporter label of §4.3 (RFC 8446 §7.5, no context, 32 bytes).
pub const EXPORTER_LABEL: &[u8] = b"EXPORTER-rjabberd-cluster";

/// How much decrypted data one drain takes at a time.
const PLAIN_CHUNK: usize = 16 * 1024;

/// The host's TLS configurations for its links, shared by every shard.
pub struct ClusterTls {
    client: Arc<rustls::ClientConfig>,
    server: Arc<rustls::ServerConfig>,
}

impl std::fmt::Debug for ClusterTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClusterTls")
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

impl ClusterTls {
    /// Loads the CA, this host's chain and its key from PEM files, and checks that they fit together:
    /// the key is the certificate's, the certificate chains to the CA and names `node`.
    pub fn load(ca: &Path, cert: &Path, key: &Path, node: &str) -> Result<ClusterTls, String> {
        let roots = pem_certs(ca, "cluster.ca_file")?;
        let chain = pem_certs(cert, "cluster.cert_file")?;
        let key_der = PrivateKeyDer::from_pem_file(key)
            .map_err(|e| format!("cluster.key_file {}: {e}", key.display()))?;
        ClusterTls::new(roots, chain, key_der, node).map_err(|e| {
            format!(
                "cluster TLS ({}, {}, {}): {e}",
                ca.display(),
                cert.display(),
                key.display()
            )
        })
    }

    /// The configurations from DER: the cluster's CA certificates, this host's chain (leaf first)
    /// and its key.
    pub fn new(
        roots: Vec<CertificateDer<'static>>,
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
        node: &str,
    ) -> Result<ClusterTls, String> {
        let provider = provider();
        let mut store = RootCertStore::empty();
        for root in roots {
            store
                .add(root)
                .map_err(|e| format!("the CA certificate is unusable: {e}"))?;
        }
        let store = Arc::new(store);
        let signing = provider
            .key_provider
            .load_private_key(key.clone_key())
            .map_err(|e| format!("the private key is unusable: {e}"))?;
        // `Unknown` (the provider cannot tell) is left to the handshake.
        if let Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) =
            CertifiedKey::new(chain.clone(), signing).keys_match()
        {
            return Err("the private key is not the certificate's".into());
        }
        let leaf = chain.first().ok_or("no certificate in cluster.cert_file")?;
        let parsed =
            ParsedCertificate::try_from(leaf).map_err(|e| format!("the certificate: {e}"))?;
        verify_server_cert_signed_by_trust_anchor(
            &parsed,
            &store,
            &chain[1..],
            UnixTime::now(),
            provider.signature_verification_algorithms.all,
        )
        .map_err(|e| format!("the certificate does not verify against the CA: {e}"))?;
        if !names_node(leaf, node) {
            return Err(format!(
                "the certificate does not name this node: it needs DNS:{node} among its subject \
                 alternative names"
            ));
        }
        ClusterTls::configs(store, chain, key)
    }

    /// A host's configurations without the checks of [`ClusterTls::new`]: a misconfigured host, for
    /// the tests of what its peers do about it.
    #[cfg(test)]
    pub(crate) fn new_unchecked(
        roots: Vec<CertificateDer<'static>>,
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    ) -> Result<ClusterTls, String> {
        let mut store = RootCertStore::empty();
        for root in roots {
            store.add(root).map_err(|e| e.to_string())?;
        }
        ClusterTls::configs(Arc::new(store), chain, key)
    }

    fn configs(
        store: Arc<RootCertStore>,
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    ) -> Result<ClusterTls, String> {
        let provider = provider();
        let verifier = WebPkiClientVerifier::builder_with_provider(store.clone(), provider.clone())
            .build()
            .map_err(|e| format!("the CA: {e}"))?;
        let mut server = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .expect("ring supports TLS 1.3")
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain.clone(), key.clone_key())
            .map_err(|e| format!("the certificate and key: {e}"))?;
        // A link is one long connection and every reconnect authenticates afresh: tickets would only
        // be one more write after the handshake.
        server.send_tls13_tickets = 0;
        let mut client = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .expect("ring supports TLS 1.3")
            .with_root_certificates(store)
            .with_client_auth_cert(chain, key)
            .map_err(|e| format!("the certificate and key: {e}"))?;
        client.resumption = rustls::client::Resumption::disabled();
        Ok(ClusterTls {
            client: Arc::new(client),
            server: Arc::new(server),
        })
    }

    /// A sender's connection to `to_node`, whose certificate must name it.
    pub fn connect(&self, to_node: &str) -> Result<TlsConn, String> {
        let name = ServerName::try_from(to_node.to_string())
            .map_err(|_| format!("node name `{to_node}` is not usable as a DNS name"))?;
        let conn =
            rustls::ClientConnection::new(self.client.clone(), name).map_err(|e| e.to_string())?;
        Ok(TlsConn::new(conn.into()))
    }

    /// A receiver's connection.
    pub fn accept(&self) -> TlsConn {
        let conn = rustls::ServerConnection::new(self.server.clone())
            .expect("a server configuration without early data always makes a connection");
        TlsConn::new(conn.into())
    }
}

fn pem_certs(path: &Path, key: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("{key} {}: {e}", path.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{key} {}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "{key} {}: no certificate in the file",
            path.display()
        ));
    }
    Ok(certs)
}

/// Whether `cert` carries `node` as a DNS subject alternative name: the rule that keeps one host's
/// certificate from speaking for another node.
pub fn names_node(cert: &CertificateDer<'_>, node: &str) -> bool {
    let Ok(name) = ServerName::try_from(node) else {
        return false;
    };
    ParsedCertificate::try_from(cert).is_ok_and(|p| verify_server_name(&p, &name).is_ok())
}

/// One link connection's TLS state: ciphertext in through [`TlsConn::feed`], plaintext out to the
/// caller's sink; plaintext in through [`TlsConn::seal`], ciphertext out from [`TlsConn::output`].
pub struct TlsConn {
    conn: rustls::Connection,
    out: Vec<u8>,
    plain: Box<[u8]>,
    /// The peer sent its close_notify: no more data will come.
    peer_closed: bool,
}

impl TlsConn {
    fn new(mut conn: rustls::Connection) -> TlsConn {
        // `seal` writes a whole batch of frames and the caller flushes it at once; rustls' default
        // cap on buffered plaintext would cut the batch.
        conn.set_buffer_limit(None);
        TlsConn {
            conn,
            out: Vec::new(),
            plain: vec![0u8; PLAIN_CHUNK].into_boxed_slice(),
            peer_closed: false,
        }
    }

    /// Whether this end accepted the connection.
    pub fn is_server(&self) -> bool {
        matches!(self.conn, rustls::Connection::Server(_))
    }

    pub fn is_handshaking(&self) -> bool {
        self.conn.is_handshaking()
    }

    /// Takes bytes read from the socket; hands every decrypted byte to `sink` at once, so that
    /// nothing stays inside rustls between two reads.
    pub fn feed(&mut self, mut bytes: &[u8], mut sink: impl FnMut(&[u8])) -> Result<(), String> {
        while !bytes.is_empty() {
            self.conn.read_tls(&mut bytes).map_err(|e| e.to_string())?;
            if let Err(e) = self.conn.process_new_packets() {
                // The alert rustls queued goes out with the next flush, if the caller makes one.
                self.pending_output();
                return Err(e.to_string());
            }
            loop {
                match self.conn.reader().read(&mut self.plain) {
                    Ok(0) => {
                        self.peer_closed = true;
                        break;
                    }
                    Ok(n) => sink(&self.plain[..n]),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    // A TCP end without close_notify: the socket read reports it.
                    Err(_) => break,
                }
            }
        }
        Ok(())
    }

    pub fn peer_closed(&self) -> bool {
        self.peer_closed
    }

    /// Encrypts `plain` for the next [`TlsConn::output`].
    pub fn seal(&mut self, plain: &[u8]) {
        self.conn
            .writer()
            .write_all(plain)
            .expect("rustls takes any amount once the buffer limit is lifted");
    }

    /// Queues close_notify.
    pub fn close(&mut self) {
        self.conn.send_close_notify();
    }

    fn pending_output(&mut self) {
        while self.conn.wants_write() {
            if self.conn.write_tls(&mut self.out).is_err() {
                break;
            }
        }
    }

    /// The ciphertext to write now (handshake messages, sealed data, alerts); the caller writes all
    /// of it and then calls [`TlsConn::written`].
    pub fn output(&mut self) -> &[u8] {
        self.pending_output();
        &self.out
    }

    pub fn written(&mut self) {
        self.out.clear();
    }

    /// The §4.3 exporter value, once the handshake is done.
    pub fn exporter(&self) -> Option<[u8; 32]> {
        self.conn
            .export_keying_material([0u8; 32], EXPORTER_LABEL, None)
            .ok()
    }

    /// Whether the peer's (already verified) certificate names `node`.
    pub fn peer_names(&self, node: &str) -> bool {
        self.conn
            .peer_certificates()
            .and_then(|c| c.first())
            .is_some_and(|leaf| names_node(leaf, node))
    }
}

#[cfg(test)]
#[path = "tls_tests.rs"]
mod tests;

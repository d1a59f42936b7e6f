//! SASL for client streams (RFC 6120 §6): the server side of PLAIN (RFC 4616), SCRAM-SHA-1 and
//! SCRAM-SHA-256 (RFC 5802, RFC 7677) and their -PLUS variants with channel binding (`tls-exporter`,
//! RFC 9266, and `tls-server-end-point`, RFC 5929), plus the stored credentials they check against. Only
//! salted SCRAM keys are ever stored (RFC 5802 §3: StoredKey and ServerKey); PLAIN is verified by
//! deriving the same keys from the offered password. This module does no I/O: randomness (the server
//! nonce) and channel-binding data are passed in, and each step returns the next challenge or the outcome.
//! Hashing, HMAC and PBKDF2 come from the RustCrypto crates.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use hmac::{KeyInit, Mac};
use subtle::ConstantTimeEq;

/// The mechanisms rjabberd offers, strongest first (the order of `<mechanisms/>`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Mechanism {
    ScramSha256Plus,
    ScramSha1Plus,
    ScramSha256,
    ScramSha1,
    Plain,
}

impl Mechanism {
    pub const ALL: [Mechanism; 5] = [
        Mechanism::ScramSha256Plus,
        Mechanism::ScramSha1Plus,
        Mechanism::ScramSha256,
        Mechanism::ScramSha1,
        Mechanism::Plain,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Mechanism::ScramSha256Plus => "SCRAM-SHA-256-PLUS",
            Mechanism::ScramSha1Plus => "SCRAM-SHA-1-PLUS",
            Mechanism::ScramSha256 => "SCRAM-SHA-256",
            Mechanism::ScramSha1 => "SCRAM-SHA-1",
            Mechanism::Plain => "PLAIN",
        }
    }

    pub fn from_name(name: &str) -> Option<Mechanism> {
        Mechanism::ALL.into_iter().find(|m| m.name() == name)
    }

    pub fn is_plus(self) -> bool {
        matches!(self, Mechanism::ScramSha256Plus | Mechanism::ScramSha1Plus)
    }

    fn hash(self) -> Option<Hash> {
        match self {
            Mechanism::ScramSha256Plus | Mechanism::ScramSha256 => Some(Hash::Sha256),
            Mechanism::ScramSha1Plus | Mechanism::ScramSha1 => Some(Hash::Sha1),
            Mechanism::Plain => None,
        }
    }
}

/// The hash a SCRAM credential is made with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Hash {
    Sha1,
    Sha256,
}

impl Hash {
    fn hmac(self, key: &[u8], data: &[&[u8]]) -> Vec<u8> {
        match self {
            Hash::Sha1 => {
                let mut m = hmac::Hmac::<sha1::Sha1>::new_from_slice(key).expect("any key length");
                data.iter().for_each(|d| m.update(d));
                m.finalize().into_bytes().to_vec()
            }
            Hash::Sha256 => {
                let mut m =
                    hmac::Hmac::<sha2::Sha256>::new_from_slice(key).expect("any key length");
                data.iter().for_each(|d| m.update(d));
                m.finalize().into_bytes().to_vec()
            }
        }
    }

    fn digest(self, data: &[u8]) -> Vec<u8> {
        use sha2::Digest;
        match self {
            Hash::Sha1 => sha1::Sha1::digest(data).to_vec(),
            Hash::Sha256 => sha2::Sha256::digest(data).to_vec(),
        }
    }

    fn salted_password(self, password: &[u8], salt: &[u8], iterations: u32) -> Vec<u8> {
        match self {
            Hash::Sha1 => {
                let mut out = vec![0; 20];
                pbkdf2::pbkdf2_hmac::<sha1::Sha1>(password, salt, iterations, &mut out);
                out
            }
            Hash::Sha256 => {
                let mut out = vec![0; 32];
                pbkdf2::pbkdf2_hmac::<sha2::Sha256>(password, salt, iterations, &mut out);
                out
            }
        }
    }
}

/// A stored SCRAM credential for one hash (RFC 5802 §3): what the server keeps instead of a password.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScramCredential {
    pub hash: Hash,
    pub iterations: u32,
    pub salt: Vec<u8>,
    pub stored_key: Vec<u8>,
    pub server_key: Vec<u8>,
}

impl ScramCredential {
    /// Derives the credential from a password, which must already be prepared (OpaqueString).
    pub fn derive(hash: Hash, password: &str, salt: &[u8], iterations: u32) -> ScramCredential {
        let salted = hash.salted_password(password.as_bytes(), salt, iterations);
        let client_key = hash.hmac(&salted, &[b"Client Key"]);
        ScramCredential {
            hash,
            iterations,
            salt: salt.to_vec(),
            stored_key: hash.digest(&client_key),
            server_key: hash.hmac(&salted, &[b"Server Key"]),
        }
    }

    /// Whether `password` is the one this credential was derived from (for PLAIN), in constant time.
    pub fn verify_password(&self, password: &str) -> bool {
        let other = ScramCredential::derive(self.hash, password, &self.salt, self.iterations);
        bool::from(other.stored_key.ct_eq(&self.stored_key))
    }
}

/// Both credentials of a user, one per hash, as the store keeps them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    pub sha1: ScramCredential,
    pub sha256: ScramCredential,
}

impl Credentials {
    /// Prepares `password` (OpaqueString, RFC 8265 §4.2) and derives both credentials with one salt.
    pub fn from_password(
        password: &str,
        salt: &[u8],
        iterations: u32,
    ) -> Result<Credentials, SaslError> {
        let password = prep_password(password)?;
        Ok(Credentials {
            sha1: ScramCredential::derive(Hash::Sha1, &password, salt, iterations),
            sha256: ScramCredential::derive(Hash::Sha256, &password, salt, iterations),
        })
    }

    /// Whether `password` is the account's (for PLAIN): checked against the SHA-256 keys, or the SHA-1
    /// keys when the account has only those (imported from a server that kept SCRAM-SHA-1 alone, where
    /// the other hash's keys are empty and match nothing).
    pub fn verify_password(&self, password: &str) -> bool {
        if self.sha256.stored_key.is_empty() {
            !self.sha1.stored_key.is_empty() && self.sha1.verify_password(password)
        } else {
            self.sha256.verify_password(password)
        }
    }

    /// The hash whose keys the account lacks while it has the other's (an import from a server that
    /// kept one hash), or `None` when it has both, or neither (nothing to check a password against).
    pub fn missing_hash(&self) -> Option<Hash> {
        match (
            self.sha1.stored_key.is_empty(),
            self.sha256.stored_key.is_empty(),
        ) {
            (true, false) => Some(Hash::Sha1),
            (false, true) => Some(Hash::Sha256),
            _ => None,
        }
    }

    /// PLAIN's check with the key upgrade: whether `password` (prepared, as PLAIN hands it over) is the
    /// account's and, when it is and the account lacks one hash's keys, the credentials completed with
    /// them (to be stored, so that the mechanism of that hash works from then on).
    pub fn verify_plain(&self, password: &str) -> PlainVerdict {
        if !self.verify_password(password) {
            return PlainVerdict::Wrong;
        }
        PlainVerdict::Right {
            completed: self.completed_with(password),
        }
    }

    /// The credentials with the missing hash's keys derived from `password`, which must have been
    /// verified; `None` when nothing is missing. The new keys take the salt and iteration count of
    /// the existing ones: the store keeps one of each per account, and so the keys that work today
    /// stay exactly as they are.
    fn completed_with(&self, password: &str) -> Option<Credentials> {
        let missing = self.missing_hash()?;
        let have = self.for_hash(match missing {
            Hash::Sha1 => Hash::Sha256,
            Hash::Sha256 => Hash::Sha1,
        });
        let derived = ScramCredential::derive(missing, password, &have.salt, have.iterations);
        let mut full = self.clone();
        match missing {
            Hash::Sha1 => full.sha1 = derived,
            Hash::Sha256 => full.sha256 = derived,
        }
        Some(full)
    }

    pub fn for_hash(&self, hash: Hash) -> &ScramCredential {
        match hash {
            Hash::Sha1 => &self.sha1,
            Hash::Sha256 => &self.sha256,
        }
    }
}

/// What [`Credentials::verify_plain`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PlainVerdict {
    Wrong,
    /// The password is right; `completed` is `Some` when the account lacked one hash's keys.
    Right {
        completed: Option<Credentials>,
    },
}

/// Prepares a password with the OpaqueString profile (RFC 8265 §4.2), as SCRAM's SASLprep successor.
pub fn prep_password(password: &str) -> Result<String, SaslError> {
    use precis_profiles::OpaqueString;
    use precis_profiles::precis_core::profile::PrecisFastInvocation;
    if password.bytes().all(|b| (0x20..0x7f).contains(&b)) && !password.is_empty() {
        return Ok(password.to_string());
    }
    OpaqueString::enforce(password)
        .map(|p| p.into_owned())
        .map_err(|_| SaslError::MalformedRequest)
}

/// A SASL failure (RFC 6120 §6.5), named by the condition sent in `<failure/>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SaslError {
    /// §6.5.10: wrong credentials, unknown user, or a channel-binding mismatch.
    NotAuthorized,
    /// §6.5.9: the exchange is not what the mechanism defines.
    MalformedRequest,
    /// §6.5.6: the authorization identity is not one the user may act as.
    InvalidAuthzid,
}

impl SaslError {
    pub fn condition(self) -> &'static str {
        match self {
            SaslError::NotAuthorized => "not-authorized",
            SaslError::MalformedRequest => "malformed-request",
            SaslError::InvalidAuthzid => "invalid-authzid",
        }
    }
}

/// Channel-binding data of the TLS connection, as the connection layer exports it.
#[derive(Debug, Clone, Default)]
pub struct ChannelBindings {
    /// RFC 9266: the TLS exporter with label `EXPORTER-Channel-Binding`, 32 bytes, empty context (TLS 1.3;
    /// TLS 1.2 only with extended master secret).
    pub tls_exporter: Option<Vec<u8>>,
    /// RFC 5929 §4: the hash of the server certificate.
    pub tls_server_end_point: Option<Vec<u8>>,
}

impl ChannelBindings {
    /// The channel-binding types to advertise (XEP-0440), in preference order.
    pub fn types(&self) -> impl Iterator<Item = &'static str> {
        self.tls_exporter
            .as_ref()
            .map(|_| "tls-exporter")
            .into_iter()
            .chain(
                self.tls_server_end_point
                    .as_ref()
                    .map(|_| "tls-server-end-point"),
            )
    }

    fn get(&self, name: &str) -> Option<&[u8]> {
        match name {
            "tls-exporter" => self.tls_exporter.as_deref(),
            "tls-server-end-point" => self.tls_server_end_point.as_deref(),
            _ => None,
        }
    }

    pub fn any(&self) -> bool {
        self.tls_exporter.is_some() || self.tls_server_end_point.is_some()
    }
}

/// What a step of the exchange asks of the caller.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// Look up the credentials of `username` (prepared localpart) and call `credentials`.
    NeedCredentials { username: String },
    /// Send this challenge (raw bytes; the stream base64-encodes them).
    Challenge(Vec<u8>),
    /// Success: send `<success/>` with these additional data (empty for PLAIN).
    Success {
        username: String,
        additional: Vec<u8>,
    },
}

enum State {
    Start,
    /// PLAIN: the password waits for the credentials.
    PlainWaiting {
        username: String,
        password: String,
    },
    /// SCRAM: client-first parsed, waiting for the credentials.
    ScramWaiting {
        username: String,
        gs2_header: String,
        client_first_bare: String,
        client_nonce: String,
        cb_name: Option<String>,
    },
    ScramFinal {
        username: String,
        gs2_header: String,
        cb_name: Option<String>,
        auth_prefix: String,
        nonce: String,
        credential: ScramCredential,
    },
    Done,
}

/// One SASL exchange on the server side.
pub struct SaslServer {
    mechanism: Mechanism,
    bindings: ChannelBindings,
    /// Whether any -PLUS mechanism was offered on this stream (RFC 5802 §6: a client that says `y` while
    /// the server supports binding is the victim of a downgrade).
    plus_offered: bool,
    server_nonce: String,
    state: State,
}

impl SaslServer {
    /// Starts an exchange. `nonce_random` is fresh randomness for the server nonce (at least 18 bytes).
    pub fn new(
        mechanism: Mechanism,
        bindings: ChannelBindings,
        plus_offered: bool,
        nonce_random: &[u8],
    ) -> Self {
        SaslServer {
            mechanism,
            bindings,
            plus_offered,
            server_nonce: B64.encode(nonce_random),
            state: State::Start,
        }
    }

    pub fn mechanism(&self) -> Mechanism {
        self.mechanism
    }

    /// The client's message: the initial response of `<auth/>` or a `<response/>`.
    pub fn step(&mut self, message: &[u8]) -> Result<Step, SaslError> {
        match std::mem::replace(&mut self.state, State::Done) {
            State::Start => match self.mechanism.hash() {
                None => self.plain(message),
                Some(_) => self.client_first(message),
            },
            State::ScramFinal {
                username,
                gs2_header,
                cb_name,
                auth_prefix,
                nonce,
                credential,
            } => self.client_final(
                message,
                username,
                gs2_header,
                cb_name,
                auth_prefix,
                nonce,
                credential,
            ),
            State::PlainWaiting { .. } | State::ScramWaiting { .. } | State::Done => {
                Err(SaslError::MalformedRequest)
            }
        }
    }

    /// For PLAIN, while waiting for the check: the offered (prepared) password, so that the caller can
    /// verify it against the stored keys off the reactor (PBKDF2 is the slow part) and answer with
    /// [`SaslServer::plain_checked`].
    pub fn plain_password(&self) -> Option<&str> {
        match &self.state {
            State::PlainWaiting { password, .. } => Some(password),
            _ => None,
        }
    }

    /// The result of verifying [`SaslServer::plain_password`] (false also when the user does not exist).
    pub fn plain_checked(&mut self, ok: bool) -> Result<Step, SaslError> {
        match std::mem::replace(&mut self.state, State::Done) {
            State::PlainWaiting { username, .. } if ok => Ok(Step::Success {
                username,
                additional: Vec::new(),
            }),
            State::PlainWaiting { .. } => Err(SaslError::NotAuthorized),
            _ => Err(SaslError::MalformedRequest),
        }
    }

    /// The credentials asked for by [`Step::NeedCredentials`]; `None` when the user does not exist (the
    /// exchange still fails as `not-authorized`, never revealing which).
    pub fn credentials(&mut self, credentials: Option<&Credentials>) -> Result<Step, SaslError> {
        match std::mem::replace(&mut self.state, State::Done) {
            State::PlainWaiting { username, password } => {
                let ok = credentials.is_some_and(|c| c.verify_password(&password));
                if ok {
                    Ok(Step::Success {
                        username,
                        additional: Vec::new(),
                    })
                } else {
                    Err(SaslError::NotAuthorized)
                }
            }
            State::ScramWaiting {
                username,
                gs2_header,
                client_first_bare,
                client_nonce,
                cb_name,
            } => {
                let hash = self.mechanism.hash().expect("SCRAM");
                // An unknown user gets a plausible challenge derived from the name, so the exchange does
                // not reveal whether the account exists; it fails at the proof.
                let credential = match credentials {
                    Some(c) => c.for_hash(hash).clone(),
                    None => ScramCredential {
                        hash,
                        iterations: 4096,
                        salt: hash.digest(username.as_bytes())[..16].to_vec(),
                        stored_key: Vec::new(),
                        server_key: Vec::new(),
                    },
                };
                let nonce = format!("{client_nonce}{}", self.server_nonce);
                let server_first = format!(
                    "r={nonce},s={},i={}",
                    B64.encode(&credential.salt),
                    credential.iterations
                );
                let auth_prefix = format!("{client_first_bare},{server_first},");
                self.state = State::ScramFinal {
                    username,
                    gs2_header,
                    cb_name,
                    auth_prefix,
                    nonce,
                    credential,
                };
                Ok(Step::Challenge(server_first.into_bytes()))
            }
            _ => Err(SaslError::MalformedRequest),
        }
    }

    fn plain(&mut self, message: &[u8]) -> Result<Step, SaslError> {
        let text = std::str::from_utf8(message).map_err(|_| SaslError::MalformedRequest)?;
        let mut parts = text.split('\0');
        let (Some(authzid), Some(authcid), Some(password), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(SaslError::MalformedRequest);
        };
        if authcid.is_empty() || password.is_empty() {
            return Err(SaslError::MalformedRequest);
        }
        let username =
            crate::proto::jid::prep_local(authcid).map_err(|_| SaslError::NotAuthorized)?;
        check_authzid(authzid, &username)?;
        let password = prep_password(password)?;
        self.state = State::PlainWaiting {
            username: username.clone(),
            password,
        };
        Ok(Step::NeedCredentials { username })
    }

    fn client_first(&mut self, message: &[u8]) -> Result<Step, SaslError> {
        let text = std::str::from_utf8(message).map_err(|_| SaslError::MalformedRequest)?;
        // gs2-header = gs2-cbind-flag "," [ authzid ] ","
        let (flag, rest) = text.split_once(',').ok_or(SaslError::MalformedRequest)?;
        let (authzid, bare) = rest.split_once(',').ok_or(SaslError::MalformedRequest)?;
        let gs2_header = &text[..flag.len() + 1 + authzid.len() + 1];
        let cb_name = match flag {
            "n" | "y" if self.mechanism.is_plus() => return Err(SaslError::MalformedRequest),
            "n" => None,
            // RFC 5802 §6: the client could have bound, believes we cannot; we can, so this is a downgrade.
            "y" if self.plus_offered => return Err(SaslError::NotAuthorized),
            "y" => None,
            f if f.starts_with("p=") && self.mechanism.is_plus() => {
                let name = &f[2..];
                if self.bindings.get(name).is_none() {
                    return Err(SaslError::NotAuthorized);
                }
                Some(name.to_string())
            }
            _ => return Err(SaslError::MalformedRequest),
        };
        let authzid = match authzid {
            "" => "",
            a => a.strip_prefix("a=").ok_or(SaslError::MalformedRequest)?,
        };
        let mut fields = bare.split(',');
        let user = next_field(&mut fields, "n=")?;
        let nonce = next_field(&mut fields, "r=")?;
        if nonce.is_empty()
            || !nonce
                .bytes()
                .all(|b| (0x21..0x7f).contains(&b) && b != b',')
        {
            return Err(SaslError::MalformedRequest);
        }
        if bare.starts_with("m=") {
            return Err(SaslError::MalformedRequest);
        }
        let user = decode_saslname(user)?;
        let username =
            crate::proto::jid::prep_local(&user).map_err(|_| SaslError::NotAuthorized)?;
        check_authzid(&decode_saslname(authzid)?, &username)?;
        self.state = State::ScramWaiting {
            username: username.clone(),
            gs2_header: gs2_header.to_string(),
            client_first_bare: bare.to_string(),
            client_nonce: nonce.to_string(),
            cb_name,
        };
        Ok(Step::NeedCredentials { username })
    }

    #[allow(clippy::too_many_arguments)]
    fn client_final(
        &mut self,
        message: &[u8],
        username: String,
        gs2_header: String,
        cb_name: Option<String>,
        auth_prefix: String,
        nonce: String,
        credential: ScramCredential,
    ) -> Result<Step, SaslError> {
        let text = std::str::from_utf8(message).map_err(|_| SaslError::MalformedRequest)?;
        let proof_at = text.rfind(",p=").ok_or(SaslError::MalformedRequest)?;
        let without_proof = &text[..proof_at];
        let proof = B64
            .decode(&text[proof_at + 3..])
            .map_err(|_| SaslError::MalformedRequest)?;
        let mut fields = without_proof.split(',');
        let cb = next_field(&mut fields, "c=")?;
        let their_nonce = next_field(&mut fields, "r=")?;
        let cb = B64.decode(cb).map_err(|_| SaslError::MalformedRequest)?;
        let mut expected_cb = gs2_header.into_bytes();
        if let Some(name) = &cb_name {
            expected_cb
                .extend_from_slice(self.bindings.get(name).expect("checked at client-first"));
        }
        if their_nonce != nonce {
            return Err(SaslError::MalformedRequest);
        }
        if !bool::from(cb.ct_eq(&expected_cb)) {
            return Err(SaslError::NotAuthorized);
        }
        let hash = credential.hash;
        if credential.stored_key.is_empty() || proof.len() != credential.stored_key.len() {
            return Err(SaslError::NotAuthorized);
        }
        let auth_message = format!("{auth_prefix}{without_proof}");
        let signature = hash.hmac(&credential.stored_key, &[auth_message.as_bytes()]);
        let client_key: Vec<u8> = proof.iter().zip(&signature).map(|(p, s)| p ^ s).collect();
        if !bool::from(hash.digest(&client_key).ct_eq(&credential.stored_key)) {
            return Err(SaslError::NotAuthorized);
        }
        let server_signature = hash.hmac(&credential.server_key, &[auth_message.as_bytes()]);
        Ok(Step::Success {
            username,
            additional: format!("v={}", B64.encode(server_signature)).into_bytes(),
        })
    }
}

/// The next `key=value` attribute of a SCRAM message, which must carry `prefix` (e.g. `"r="`).
fn next_field<'a>(
    fields: &mut std::str::Split<'a, char>,
    prefix: &str,
) -> Result<&'a str, SaslError> {
    fields
        .next()
        .and_then(|f| f.strip_prefix(prefix))
        .ok_or(SaslError::MalformedRequest)
}

/// RFC 5802 §5.1: `=2C` is `,` and `=3D` is `=`; any other `=` is malformed.
fn decode_saslname(s: &str) -> Result<String, SaslError> {
    if !s.contains('=') {
        return Ok(s.to_string());
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('=') {
        out.push_str(&rest[..i]);
        match rest.get(i + 1..i + 3) {
            Some("2C") => out.push(','),
            Some("3D") => out.push('='),
            _ => return Err(SaslError::MalformedRequest),
        }
        rest = &rest[i + 3..];
    }
    out.push_str(rest);
    Ok(out)
}

/// An authorization identity may only name the user itself (as a bare JID or its localpart): rjabberd
/// has no proxy authorization.
fn check_authzid(authzid: &str, username: &str) -> Result<(), SaslError> {
    if authzid.is_empty() {
        return Ok(());
    }
    let local = match crate::proto::jid::Jid::parse(authzid) {
        Ok(j) if j.is_bare() => j.local().map(str::to_string),
        _ => None,
    };
    if local.as_deref() == Some(username) {
        Ok(())
    } else {
        Err(SaslError::InvalidAuthzid)
    }
}

/// The client side of SCRAM, for tests and the bench harness: the same computations from the other end.
pub mod client {
    use super::*;

    /// A salted password (PBKDF2 output) kept for reuse; see [`ScramClient::client_final_cached`].
    #[derive(Clone)]
    pub struct SaltedPassword {
        hash: Hash,
        salt: Vec<u8>,
        iterations: u32,
        salted: Vec<u8>,
    }

    /// A SCRAM client exchange.
    pub struct ScramClient {
        hash: Hash,
        password: String,
        gs2_header: String,
        cb_data: Vec<u8>,
        client_first_bare: String,
        server_key: Vec<u8>,
        auth_message: String,
    }

    impl ScramClient {
        /// `binding`: `Some((name, data))` for a -PLUS mechanism, else `None` (flag `n`).
        pub fn new(
            hash: Hash,
            user: &str,
            password: &str,
            nonce: &str,
            binding: Option<(&str, &[u8])>,
        ) -> Self {
            let (gs2_header, cb_data) = match binding {
                Some((name, data)) => (format!("p={name},,"), data.to_vec()),
                None => ("n,,".to_string(), Vec::new()),
            };
            let user = user.replace('=', "=3D").replace(',', "=2C");
            ScramClient {
                hash,
                password: password.to_string(),
                gs2_header,
                cb_data,
                client_first_bare: format!("n={user},r={nonce}"),
                server_key: Vec::new(),
                auth_message: String::new(),
            }
        }

        pub fn client_first(&self) -> Vec<u8> {
            format!("{}{}", self.gs2_header, self.client_first_bare).into_bytes()
        }

        /// Answers the server-first message with the client-final message.
        pub fn client_final(&mut self, server_first: &[u8]) -> Result<Vec<u8>, SaslError> {
            self.client_final_cached(server_first, &mut None)
        }

        /// As [`ScramClient::client_final`], reusing the salted password of an earlier exchange with the
        /// same salt and iteration count: a load generator logging in many accounts provisioned with one
        /// salt pays PBKDF2 once instead of once per login.
        pub fn client_final_cached(
            &mut self,
            server_first: &[u8],
            cache: &mut Option<SaltedPassword>,
        ) -> Result<Vec<u8>, SaslError> {
            let text =
                std::str::from_utf8(server_first).map_err(|_| SaslError::MalformedRequest)?;
            let mut nonce = None;
            let mut salt = None;
            let mut iterations = None;
            for f in text.split(',') {
                if let Some(v) = f.strip_prefix("r=") {
                    nonce = Some(v);
                } else if let Some(v) = f.strip_prefix("s=") {
                    salt = B64.decode(v).ok();
                } else if let Some(v) = f.strip_prefix("i=") {
                    iterations = v.parse().ok();
                }
            }
            let (Some(nonce), Some(salt), Some(iterations)) = (nonce, salt, iterations) else {
                return Err(SaslError::MalformedRequest);
            };
            let salted = match cache {
                Some(c) if c.salt == salt && c.iterations == iterations && c.hash == self.hash => {
                    c.salted.clone()
                }
                _ => {
                    let password = prep_password(&self.password)?;
                    let salted = self
                        .hash
                        .salted_password(password.as_bytes(), &salt, iterations);
                    *cache = Some(SaltedPassword {
                        hash: self.hash,
                        salt: salt.clone(),
                        iterations,
                        salted: salted.clone(),
                    });
                    salted
                }
            };
            let client_key = self.hash.hmac(&salted, &[b"Client Key"]);
            let stored_key = self.hash.digest(&client_key);
            self.server_key = self.hash.hmac(&salted, &[b"Server Key"]);
            let mut cb = self.gs2_header.clone().into_bytes();
            cb.extend_from_slice(&self.cb_data);
            let without_proof = format!("c={},r={nonce}", B64.encode(cb));
            self.auth_message = format!("{},{text},{without_proof}", self.client_first_bare);
            let signature = self.hash.hmac(&stored_key, &[self.auth_message.as_bytes()]);
            let proof: Vec<u8> = client_key
                .iter()
                .zip(&signature)
                .map(|(k, s)| k ^ s)
                .collect();
            Ok(format!("{without_proof},p={}", B64.encode(proof)).into_bytes())
        }

        /// Checks the server's signature in the success data.
        pub fn verify_server(&self, server_final: &[u8]) -> bool {
            let expected = self
                .hash
                .hmac(&self.server_key, &[self.auth_message.as_bytes()]);
            server_final == format!("v={}", B64.encode(expected)).as_bytes()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::client::ScramClient;
    use super::*;

    fn run(
        mech: Mechanism,
        creds: Option<&Credentials>,
        client: &mut ScramClient,
        bindings: ChannelBindings,
    ) -> Result<Vec<u8>, SaslError> {
        let mut server = SaslServer::new(mech, bindings, true, b"0123456789abcdefgh");
        let Step::NeedCredentials { username } = server.step(&client.client_first())? else {
            panic!("credentials first")
        };
        assert_eq!(username, "user");
        let Step::Challenge(first) = server.credentials(creds)? else {
            panic!("challenge")
        };
        let last = client.client_final(&first)?;
        match server.step(&last)? {
            Step::Success { additional, .. } => Ok(additional),
            other => panic!("{other:?}"),
        }
    }

    /// RFC 5802 §5 and RFC 7677 §3 give the same exchange for user `user`, password `pencil`.
    #[test]
    fn rfc_5802_and_7677_vectors() {
        for (hash, salt, iterations, client_nonce, server_nonce, proof, verifier) in [
            (
                Hash::Sha1,
                "QSXCR+Q6sek8bf92",
                4096,
                "fyko+d2lbbFgONRv9qkxdawL",
                "3rfcNHYJY1ZVvWVs7j",
                "v0X8v3Bz2T0CJGbJQyF0X+HI4Ts=",
                "v=rmF9pqV8S7suAoZWja4dJRkFsKQ=",
            ),
            (
                Hash::Sha256,
                "W22ZaJ0SNY7soEsUEjb6gQ==",
                4096,
                "rOprNGfwEbeRWgbNEkqO",
                "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0",
                "dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=",
                "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=",
            ),
        ] {
            let salt = B64.decode(salt).unwrap();
            let cred = ScramCredential::derive(hash, "pencil", &salt, iterations);
            // Drive the server with the RFC's client messages and its server nonce.
            let mut server = SaslServer::new(
                if hash == Hash::Sha1 {
                    Mechanism::ScramSha1
                } else {
                    Mechanism::ScramSha256
                },
                ChannelBindings::default(),
                false,
                &[],
            );
            server.server_nonce = server_nonce.to_string();
            let first = format!("n,,n=user,r={client_nonce}");
            assert!(matches!(
                server.step(first.as_bytes()),
                Ok(Step::NeedCredentials { .. })
            ));
            let creds = Credentials {
                sha1: cred.clone(),
                sha256: cred.clone(),
            };
            let Ok(Step::Challenge(c)) = server.credentials(Some(&creds)) else {
                panic!()
            };
            let nonce = format!("{client_nonce}{server_nonce}");
            assert_eq!(
                String::from_utf8(c).unwrap(),
                format!("r={nonce},s={},i=4096", B64.encode(&salt))
            );
            let last = format!("c=biws,r={nonce},p={proof}");
            match server.step(last.as_bytes()) {
                Ok(Step::Success {
                    additional,
                    username,
                }) => {
                    assert_eq!(username, "user");
                    assert_eq!(additional, verifier.as_bytes());
                }
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn scram_round_trips_and_fails_on_a_wrong_password() {
        let creds = Credentials::from_password("pencil", b"saltsaltsaltsalt", 4096).unwrap();
        for (mech, hash) in [
            (Mechanism::ScramSha1, Hash::Sha1),
            (Mechanism::ScramSha256, Hash::Sha256),
        ] {
            let mut c = ScramClient::new(hash, "User", "pencil", "abc", None);
            let v = run(mech, Some(&creds), &mut c, ChannelBindings::default()).unwrap();
            assert!(c.verify_server(&v));
            let mut wrong = ScramClient::new(hash, "user", "pencil!", "abc", None);
            assert_eq!(
                run(mech, Some(&creds), &mut wrong, ChannelBindings::default()),
                Err(SaslError::NotAuthorized)
            );
            let mut nobody = ScramClient::new(hash, "user", "pencil", "abc", None);
            assert_eq!(
                run(mech, None, &mut nobody, ChannelBindings::default()),
                Err(SaslError::NotAuthorized)
            );
        }
    }

    #[test]
    fn channel_binding_is_checked() {
        let creds = Credentials::from_password("pencil", b"saltsaltsaltsalt", 4096).unwrap();
        let bindings = ChannelBindings {
            tls_exporter: Some(vec![7; 32]),
            tls_server_end_point: Some(vec![9; 32]),
        };
        for name in ["tls-exporter", "tls-server-end-point"] {
            let data = bindings.get(name).unwrap().to_vec();
            let mut good =
                ScramClient::new(Hash::Sha256, "user", "pencil", "n1", Some((name, &data)));
            assert!(
                run(
                    Mechanism::ScramSha256Plus,
                    Some(&creds),
                    &mut good,
                    bindings.clone()
                )
                .is_ok()
            );
            let mut mitm =
                ScramClient::new(Hash::Sha256, "user", "pencil", "n1", Some((name, &[1; 32])));
            assert_eq!(
                run(
                    Mechanism::ScramSha256Plus,
                    Some(&creds),
                    &mut mitm,
                    bindings.clone()
                ),
                Err(SaslError::NotAuthorized)
            );
        }
        // `y` while the server offered -PLUS: a downgrade.
        let mut server = SaslServer::new(Mechanism::ScramSha256, bindings.clone(), true, b"n");
        assert_eq!(
            server.step(b"y,,n=user,r=abc"),
            Err(SaslError::NotAuthorized)
        );
        // A -PLUS mechanism without a binding name.
        let mut server = SaslServer::new(Mechanism::ScramSha1Plus, bindings, true, b"n");
        assert_eq!(
            server.step(b"n,,n=user,r=abc"),
            Err(SaslError::MalformedRequest)
        );
    }

    #[test]
    fn plain() {
        let creds = Credentials::from_password("pencil", b"saltsaltsaltsalt", 4096).unwrap();
        let mut s = SaslServer::new(Mechanism::Plain, ChannelBindings::default(), false, b"");
        assert_eq!(
            s.step(b"\0User\0pencil"),
            Ok(Step::NeedCredentials {
                username: "user".into()
            })
        );
        assert!(matches!(
            s.credentials(Some(&creds)),
            Ok(Step::Success { .. })
        ));
        let mut s = SaslServer::new(Mechanism::Plain, ChannelBindings::default(), false, b"");
        s.step(b"\0user\0wrong").unwrap();
        assert_eq!(s.credentials(Some(&creds)), Err(SaslError::NotAuthorized));
        let mut s = SaslServer::new(Mechanism::Plain, ChannelBindings::default(), false, b"");
        assert_eq!(s.step(b"user\0pencil"), Err(SaslError::MalformedRequest));
        let mut s = SaslServer::new(Mechanism::Plain, ChannelBindings::default(), false, b"");
        assert_eq!(
            s.step(b"other@example.org\0user\0pencil"),
            Err(SaslError::InvalidAuthzid)
        );
        let mut s = SaslServer::new(Mechanism::Plain, ChannelBindings::default(), false, b"");
        assert!(s.step(b"user@example.org\0user\0pencil").is_ok());
    }

    /// An account with one hash's keys, as an import leaves it: the other's are empty, with the same
    /// salt and iteration count.
    fn one_hash(creds: &Credentials, keep: Hash) -> Credentials {
        let mut one = creds.clone();
        let gone = match keep {
            Hash::Sha1 => &mut one.sha256,
            Hash::Sha256 => &mut one.sha1,
        };
        gone.stored_key.clear();
        gone.server_key.clear();
        one
    }

    #[test]
    fn the_missing_hash_is_completed_from_the_password() {
        let full = Credentials::from_password("pencil", b"saltsaltsaltsalt", 4096).unwrap();
        assert_eq!(full.missing_hash(), None);
        assert_eq!(
            full.verify_plain("pencil"),
            PlainVerdict::Right { completed: None },
            "nothing to upgrade"
        );
        for (keep, missing) in [(Hash::Sha1, Hash::Sha256), (Hash::Sha256, Hash::Sha1)] {
            let one = one_hash(&full, keep);
            assert_eq!(one.missing_hash(), Some(missing));
            assert!(one.verify_password("pencil"));
            // Same salt and iterations: the result is what a password set with them gives.
            assert_eq!(
                one.verify_plain("pencil"),
                PlainVerdict::Right {
                    completed: Some(full.clone())
                }
            );
            assert_eq!(one.verify_plain("pencil!"), PlainVerdict::Wrong);
            let mech = match missing {
                Hash::Sha1 => Mechanism::ScramSha1,
                Hash::Sha256 => Mechanism::ScramSha256,
            };
            let mut c = ScramClient::new(missing, "user", "pencil", "abc", None);
            assert_eq!(
                run(mech, Some(&one), &mut c, ChannelBindings::default()),
                Err(SaslError::NotAuthorized),
                "empty keys match no proof"
            );
            let upgraded = one.completed_with("pencil").unwrap();
            let mut c = ScramClient::new(missing, "user", "pencil", "abc", None);
            assert!(run(mech, Some(&upgraded), &mut c, ChannelBindings::default()).is_ok());
        }
        let none = one_hash(&one_hash(&full, Hash::Sha1), Hash::Sha256);
        assert_eq!(none.missing_hash(), None, "no keys: nothing to derive from");
        assert_eq!(none.verify_plain("pencil"), PlainVerdict::Wrong);
    }

    #[test]
    fn saslname_escapes() {
        assert_eq!(decode_saslname("a=2Cb=3Dc").unwrap(), "a,b=c");
        assert_eq!(decode_saslname("a=2"), Err(SaslError::MalformedRequest));
    }
}

//! Loading a host's TLS files: a good set loads, and each way an operator gets one wrong is refused at
//! start with the file and the fault named (files made here with rcgen).

use std::path::{Path, PathBuf};

use super::*;

struct Files {
    dir: PathBuf,
}

impl Files {
    fn new(name: &str) -> Files {
        let dir = std::env::temp_dir().join(format!(
            "rjabberd-cluster-tls-{}-{name}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Files { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.path(name);
        std::fs::write(&p, text).unwrap();
        p
    }
}

impl Drop for Files {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A CA (PEM) and a signer for it.
fn ca() -> (String, rcgen::Issuer<'static, rcgen::KeyPair>) {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let key = rcgen::KeyPair::generate().unwrap();
    let pem = params.self_signed(&key).unwrap().pem();
    (pem, rcgen::Issuer::new(params, key))
}

/// A certificate naming `name` (PEM) and its key (PEM).
fn leaf(issuer: &rcgen::Issuer<'static, rcgen::KeyPair>, name: &str) -> (String, String) {
    let params = rcgen::CertificateParams::new(vec![name.to_string()]).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, issuer).unwrap();
    (cert.pem(), key.serialize_pem())
}

fn load(ca: &Path, cert: &Path, key: &Path) -> Result<ClusterTls, String> {
    ClusterTls::load(ca, cert, key, "n1")
}

#[test]
fn a_good_set_loads_and_each_fault_is_named() {
    let f = Files::new("load");
    let (ca_pem, issuer) = ca();
    let (other_pem, other) = ca();
    let ca = f.write("ca.pem", &ca_pem);
    let (cert, key) = leaf(&issuer, "n1");
    let (cert, key) = (f.write("n1.pem", &cert), f.write("n1.key", &key));
    assert!(load(&ca, &cert, &key).is_ok());

    let (n2_cert, n2_key) = leaf(&issuer, "n2");
    let (n2_cert, n2_key) = (f.write("n2.pem", &n2_cert), f.write("n2.key", &n2_key));
    let e = load(&ca, &cert, &n2_key).err().unwrap();
    assert!(
        e.contains("not the certificate's") && e.contains("n2.key"),
        "{e}"
    );
    let e = load(&ca, &n2_cert, &n2_key).err().unwrap();
    assert!(e.contains("DNS:n1"), "{e}");

    let (stray_cert, stray_key) = leaf(&other, "n1");
    let (stray_cert, stray_key) = (f.write("s.pem", &stray_cert), f.write("s.key", &stray_key));
    let e = load(&ca, &stray_cert, &stray_key).err().unwrap();
    assert!(e.contains("does not verify against the CA"), "{e}");
    let other_ca = f.write("other-ca.pem", &other_pem);
    assert!(load(&other_ca, &stray_cert, &stray_key).is_ok());

    let garbage = f.write("garbage.pem", "not a PEM file\n");
    let e = load(&garbage, &cert, &key).err().unwrap();
    assert!(
        e.contains("cluster.ca_file") && e.contains("garbage.pem"),
        "{e}"
    );
    let e = load(&ca, &garbage, &key).err().unwrap();
    assert!(
        e.contains("cluster.cert_file") && e.contains("garbage.pem"),
        "{e}"
    );
    let e = load(&ca, &cert, &garbage).err().unwrap();
    assert!(
        e.contains("cluster.key_file") && e.contains("garbage.pem"),
        "{e}"
    );
    let e = load(&ca, &cert, &f.path("missing.key")).err().unwrap();
    assert!(e.contains("missing.key"), "{e}");
}

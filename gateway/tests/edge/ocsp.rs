//! OCSP stapling against a real responder (`openssl ocsp`): a certificate that names the responder is
//! stapled "good" in every handshake (seen by `openssl s_client -status`), a revoked one is stapled as
//! revoked, a response signed by anyone but the issuer is never stapled; when the responder goes away
//! the last good response stays stapled until its nextUpdate, and is dropped then.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::helpers::*;
use crate::tls_helpers::*;

/// Runs `openssl ocsp` as a responder signing with `signer`, answering from `index`; killed on drop.
struct Responder(Child);

impl Responder {
    fn start(dir: &std::path::Path, port: u16, ca: &Pki, signer: &Pki, tag: &str) -> Responder {
        let write = |name: &str, body: &str| {
            let p = dir.join(format!("{tag}-{name}"));
            std::fs::write(&p, body).expect("write");
            p
        };
        let ca_pem = write("ca.pem", &ca.pem);
        let signer_pem = write("signer.pem", &signer.pem);
        let signer_key = write("signer.key", &signer.key_pem);
        let child = Command::new("openssl")
            .args(["ocsp", "-port", &port.to_string(), "-index"])
            .arg(dir.join("index.txt"))
            .arg("-CA")
            .arg(ca_pem)
            .arg("-rsigner")
            .arg(signer_pem)
            .arg("-rkey")
            .arg(signer_key)
            .args(["-nmin", "1", "-ignore_err"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("openssl ocsp");
        Responder(child)
    }
}

impl Drop for Responder {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A leaf of `pki` for `name`, serial `serial`, naming the OCSP responder at `port`: (chain PEM with
/// the issuer, key PEM).
fn leaf(pki: &Pki, name: &str, serial: &[u8], port: u16) -> (String, String) {
    let key = rcgen::KeyPair::generate().expect("key");
    let mut params = rcgen::CertificateParams::new(vec![name.to_string()]).expect("params");
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    params.serial_number = Some(rcgen::SerialNumber::from_slice(serial));
    // authorityInfoAccess: SEQUENCE { SEQUENCE { id-ad-ocsp, [6] uniformResourceIdentifier } }
    let url = format!("http://127.0.0.1:{port}");
    let mut desc = vec![0x06, 0x08, 0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x30, 0x01];
    desc.push(0x86);
    desc.push(url.len() as u8);
    desc.extend_from_slice(url.as_bytes());
    let mut access = vec![0x30, desc.len() as u8];
    access.extend_from_slice(&desc);
    let mut aia = vec![0x30, access.len() as u8];
    aia.extend_from_slice(&access);
    params.custom_extensions = vec![rcgen::CustomExtension::from_oid_content(
        &[1, 3, 6, 1, 5, 5, 7, 1, 1],
        aia,
    )];
    let cert = params.signed_by(&key, &pki.issuer).expect("leaf");
    (format!("{}{}", cert.pem(), pki.pem), key.serialize_pem())
}

/// What `openssl s_client -status` saw for `name`.
fn stapled(port: u16, name: &str) -> String {
    let out = Command::new("openssl")
        .args(["s_client", "-connect", &format!("127.0.0.1:{port}")])
        .args(["-servername", name, "-status"])
        .stdin(Stdio::null())
        .output()
        .expect("openssl s_client");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

async fn within<F, Fut>(secs: u64, what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(secs) {
        if f().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    panic!("timed out after {secs} s waiting for: {what}");
}

fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

#[tokio::test]
async fn ocsp_responses_are_stapled_kept_through_a_responder_outage_and_dropped_when_expired() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = Pki::new("OCSP Test CA");
    let stranger = Pki::new("Stranger");
    let (port, forged_port) = (free_port(), free_port());
    let good = leaf(&ca, "*.aggios.test", &[0x10, 0x01], port);
    let revoked = leaf(&ca, "revoked.example.test", &[0x10, 0x02], port);
    let forged = leaf(&ca, "forged.example.test", &[0x10, 0x03], forged_port);
    // openssl's CA database: V(alid) or R(evoked), expiry, revocation time, serial, file, subject.
    std::fs::write(
        dir.path().join("index.txt"),
        "V\t361231000000Z\t\t1001\tunknown\t/CN=*.aggios.test\n\
         R\t361231000000Z\t260101000000Z\t1002\tunknown\t/CN=revoked.example.test\n\
         V\t361231000000Z\t\t1003\tunknown\t/CN=forged.example.test\n",
    )
    .expect("index");
    let responder = Responder::start(dir.path(), port, &ca, &ca, "issuer");
    // A responder whose answers are signed by a key the issuer never vouched for.
    let _forger = Responder::start(dir.path(), forged_port, &ca, &stranger, "forger");
    let mut certs = String::new();
    for (i, (chain, key)) in [&good, &revoked, &forged].into_iter().enumerate() {
        let (c, k) = (
            dir.path().join(format!("{i}.pem")),
            dir.path().join(format!("{i}.key")),
        );
        std::fs::write(&c, chain).expect("write");
        std::fs::write(&k, key).expect("write");
        certs.push_str(&format!(
            "[[tls.certificates]]\ncert = \"{}\"\nkey = \"{}\"\n",
            c.display(),
            k.display()
        ));
    }
    let up = TestUpstream::start("u");
    let gw = Gateway::start(&format!(
        "[tls]\n{certs}\n{}\n[[routes]]\nname = \"r\"\nupstream = \"u\"\n",
        upstream_toml("u", &[&up], "")
    ))
    .await;

    within(30, "a good response stapled", || async {
        let out = stapled(gw.https, "acme.aggios.test");
        out.contains("OCSP Response Status: successful") && out.contains("Cert Status: good")
    })
    .await;
    within(30, "the revoked certificate stapled as revoked", || async {
        stapled(gw.https, "revoked.example.test").contains("Cert Status: revoked")
    })
    .await;
    let series = |name: &str| format!("{name}{{domain=\"*.aggios.test\"}}");
    let this_update = gw
        .metric(&series("gateway_tls_ocsp_this_update_timestamp_seconds"))
        .await;
    let next_update = gw
        .metric(&series("gateway_tls_ocsp_next_update_timestamp_seconds"))
        .await;
    assert_eq!(next_update - this_update, 60.0, "openssl ocsp -nmin 1");
    assert!((now() - this_update).abs() < 120.0);
    // The forger's answers were fetched (and refused): never stapled.
    within(30, "the forged response refused", || async {
        gw.metric("gateway_tls_ocsp_fetches_total{result=\"failed\"}")
            .await
            >= 1.0
    })
    .await;
    let out = stapled(gw.https, "forged.example.test");
    assert!(
        out.contains("OCSP response: no response sent"),
        "a response signed by a stranger was stapled:\n{out}"
    );

    // The responder goes away: the refresh (halfway, ~30 s in) fails, the good response stays
    // stapled until its nextUpdate.
    drop(responder);
    within(
        70,
        "a failed refresh of the good certificate's response",
        || async {
            gw.metric(&series("gateway_tls_ocsp_consecutive_failures"))
                .await
                >= 1.0
        },
    )
    .await;
    assert!(
        now() < next_update,
        "the refresh was tried only after the response expired"
    );
    if now() + 2.0 < next_update {
        let out = stapled(gw.https, "acme.aggios.test");
        assert!(
            out.contains("Cert Status: good"),
            "dropped before it expired:\n{out}"
        );
    }
    // Past its nextUpdate it is not served any more.
    within(90, "the expired response dropped", || async {
        stapled(gw.https, "acme.aggios.test").contains("OCSP response: no response sent")
    })
    .await;
    assert!(now() >= next_update - 1.0, "dropped before its nextUpdate");
    assert_eq!(
        gw.metric(&series("gateway_tls_ocsp_next_update_timestamp_seconds"))
            .await,
        0.0
    );
}

//! Writes the generated part of the seed corpora (`cargo test -p weft-fuzz-checks --test seeds --
//! --ignored`): a real ClientHello from rustls, certificates and CSRs from the product's own CA code and
//! rcgen, DNS questions, control frames. Ignored in the normal run: the committed files are the seeds.

use rustls_pki_types::pem::PemObject;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use weft_api::control::encode;
use weft_certs::{CertificateAuthority, KeyAndCsr, SpiffeId, TrustDomain, Validity};

fn write(target: &str, name: &str, data: &[u8]) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target);
    std::fs::create_dir_all(&dir).expect("corpus dir");
    std::fs::write(dir.join(name), data).expect("seed");
}

fn client_hello(sni: &str) -> Vec<u8> {
    let roots = rustls::RootCertStore::empty();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from(sni.to_owned()).expect("name");
    let mut conn = rustls::ClientConnection::new(Arc::new(cfg), name).expect("client");
    let mut out = Vec::new();
    conn.write_tls(&mut out).expect("hello");
    out
}

fn dns_query(id: u16, name: &str, qtype: u16, edns: bool) -> Vec<u8> {
    let mut m = vec![
        (id >> 8) as u8,
        id as u8,
        0x01,
        0x00,
        0,
        1,
        0,
        0,
        0,
        0,
        0,
        u8::from(edns),
    ];
    for label in name.trim_end_matches('.').split('.') {
        m.push(label.len() as u8);
        m.extend_from_slice(label.as_bytes());
    }
    m.push(0);
    m.extend_from_slice(&qtype.to_be_bytes());
    m.extend_from_slice(&[0, 1]);
    if edns {
        m.extend_from_slice(&[0, 0, 41, 0x10, 0, 0, 0, 0, 0, 0, 0]);
    }
    m
}

#[test]
#[ignore]
fn write_seeds() {
    for (i, sni) in ["example.com", "reviews.default.svc.cluster.local", "a.b"]
        .iter()
        .enumerate()
    {
        let hello = client_hello(sni);
        write("tls_sni", &format!("client-hello-{i}"), &hello);
        write("detect", &format!("client-hello-{i}"), &hello);
    }
    let td = TrustDomain::new("fuzz.local").expect("td");
    let ca = CertificateAuthority::new_root(&td, Validity::starting_now(Duration::from_secs(3600)))
        .expect("ca");
    let inter = ca
        .new_intermediate(Validity::starting_now(Duration::from_secs(3600)))
        .expect("intermediate");
    let id = SpiffeId::for_workload(&td, "default", "fuzz").expect("id");
    let req = KeyAndCsr::generate(&id).expect("csr");
    write("csr", "workload.csr.pem", req.csr_pem().as_bytes());
    let other = SpiffeId::for_workload(&td, "default", "other").expect("id");
    write(
        "csr",
        "other-identity.csr.pem",
        KeyAndCsr::generate(&other)
            .expect("csr")
            .csr_pem()
            .as_bytes(),
    );
    let leaf = ca
        .sign_csr(
            req.csr_pem(),
            &id,
            Validity::starting_now(Duration::from_secs(600)),
        )
        .expect("leaf");
    let mut chain = Vec::new();
    for (i, pem) in [leaf, inter.cert_pem(), ca.cert_pem()].iter().enumerate() {
        let der = rustls_pki_types::CertificateDer::from_pem_slice(pem.as_bytes()).expect("der");
        write("x509", &format!("cert-{i}.der"), &der);
        chain.extend_from_slice(&der);
    }
    write("x509", "chain.der", &chain);
    let mut params = rcgen::CertificateParams::new(vec!["example.com".to_owned()]).expect("params");
    params.subject_alt_names.push(rcgen::SanType::URI(
        "spiffe://fuzz.local/ns/a/sa/b".try_into().expect("uri"),
    ));
    let key = rcgen::KeyPair::generate().expect("key");
    write(
        "x509",
        "rcgen-two-sans.der",
        params.self_signed(&key).expect("cert").der(),
    );
    for (i, (name, t, edns)) in [
        ("reviews.default.svc.cluster.local", 1, false),
        ("reviews", 28, true),
        ("example.com", 1, true),
        ("reviews.default", 252, false),
        ("x.default.svc.cluster.local", 16, false),
    ]
    .iter()
    .enumerate()
    {
        write(
            "dns",
            &format!("query-{i}"),
            &dns_query(i as u16 + 1, name, *t, *edns),
        );
    }
    control_seeds();
}

fn control_seeds() {
    use weft_api::control::{FromControl, FromProxy, Hello};
    let hello: Hello = serde_json::from_value(serde_json::json!({
        "protocol": 1, "proxyVersion": "0.1.0",
        "workload": {"name": "reviews-1", "labels": {"app": "reviews"}, "address": "10.0.0.7",
            "tunnelPort": 15008, "ports": [9080], "ready": true},
    }))
    .expect("hello");
    let mut stream = encode(&hello).to_vec();
    write("control_frames", "hello", &stream);
    for m in [
        serde_json::json!({"type": "ready", "ready": false}),
        serde_json::json!({"type": "ack", "version": 3}),
        serde_json::json!({"type": "nack", "version": 4, "reason": "bad"}),
    ] {
        let m: FromProxy = serde_json::from_value(m).expect("message");
        stream.extend_from_slice(&encode(&m));
    }
    write("control_frames", "hello-then-more", &stream);
    stream.truncate(stream.len() - 3);
    write("control_frames", "truncated", &stream);
    write(
        "control_frames",
        "too-large",
        &[0xff, 0xff, 0xff, 0xff, b'{'],
    );
    let snap: FromControl =
        serde_json::from_value(serde_json::json!({"type": "snapshot", "version": 1}))
            .expect("snapshot");
    write("control_frames", "snapshot", &encode(&snap));
}

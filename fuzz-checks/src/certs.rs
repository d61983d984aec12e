//! SPIFFE IDs, certificates (parsing and peer-chain verification) and CSRs in the issuer.

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use std::str::FromStr;
use std::sync::{Arc, LazyLock};
use std::time::{Duration, SystemTime};
use weft_certs::{CertificateAuthority, SpiffeId, TrustBundle, TrustDomain, Validity};
use weft_control::claims::ClaimStore;
use weft_control::issuer::Issuer;
use weft_control::metrics::Metrics;
use weft_control::revocation::Revocations;
use weft_control::tokens::TokenStore;

/// A SPIFFE ID that parses reads back the same from its own text, through serde too, and its parts
/// rebuild it.
pub fn spiffe_id(data: &[u8]) {
    let s = super::text(data);
    let Ok(id) = SpiffeId::parse(&s) else {
        return;
    };
    assert_eq!(SpiffeId::from_str(id.as_str()).as_ref(), Ok(&id));
    assert_eq!(id.to_string(), id.as_str());
    let td = TrustDomain::new(id.trust_domain()).expect("the trust domain of an ID parses");
    assert_eq!(td.as_str(), id.trust_domain());
    let json = serde_json::to_string(&id).expect("serialize");
    assert_eq!(
        serde_json::from_str::<SpiffeId>(&json).ok().as_ref(),
        Some(&id)
    );
    if let (Some(ns), Some(sa)) = (id.namespace(), id.service_account()) {
        let rebuilt = SpiffeId::for_workload(&td, ns, sa).expect("workload parts rebuild");
        assert_eq!(rebuilt, id);
    }
}

struct Mesh {
    td: TrustDomain,
    bundle: TrustBundle,
    issuer: Issuer,
    workload: SpiffeId,
}

static MESH: LazyLock<Mesh> = LazyLock::new(|| {
    let td = TrustDomain::new("fuzz.local").expect("td");
    let ca =
        CertificateAuthority::new_root(&td, Validity::starting_now(Duration::from_secs(86_400)))
            .expect("ca");
    let bundle = TrustBundle::from_pem(&ca.cert_pem()).expect("bundle");
    let dir = std::env::temp_dir().join(format!("weft-fuzz-issuer-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let tokens = TokenStore::open(dir.join("tokens.json"), td.clone()).expect("tokens");
    let claims = ClaimStore::open(dir.join("claims.json")).expect("claims");
    let revocations = Revocations::open(None).expect("revocations");
    let pem = ca.cert_pem();
    let issuer = Issuer::new(
        ca,
        pem,
        tokens,
        claims,
        revocations,
        Arc::new(Metrics::new()),
    );
    let workload = SpiffeId::for_workload(&td, "default", "fuzz").expect("id");
    Mesh {
        td,
        bundle,
        issuer,
        workload,
    }
});

/// Certificate reading never panics on any DER; a leaf with an ID has exactly the ID its SAN says; and
/// no input chain verifies against a bundle whose key nothing here can sign with.
pub fn x509(data: &[u8]) {
    if let Ok(facts) = weft_certs::fuzzing::certificate(data) {
        if let Ok(td) = &facts.ca_trust_domain {
            let id = facts
                .spiffe_id
                .as_ref()
                .expect("a CA trust domain comes from its ID");
            assert_eq!(id.trust_domain(), td.as_str());
        }
        assert_eq!(
            weft_certs::leaf_serial_hex(data).as_ref(),
            Some(&facts.serial_hex)
        );
    }
    // The input as a peer's chain: its certificates split where a length-prefixed DER would put them.
    let chain = der_chain(data);
    let m = &*MESH;
    for server in [true, false] {
        let r =
            weft_certs::fuzzing::verify_peer(&chain, &m.bundle, &m.td, server, SystemTime::now());
        assert!(
            r.is_err(),
            "a chain not signed by the fuzz CA verified: {r:?}"
        );
    }
    // And as a PEM bundle file.
    let _ = TrustBundle::from_pem(&super::text(data));
}

/// Splits `data` into DER certificates by their outer SEQUENCE lengths (at most 4); the rest is dropped.
fn der_chain(mut data: &[u8]) -> Vec<CertificateDer<'static>> {
    let mut out = Vec::new();
    while out.len() < 4 && data.len() >= 4 && data[0] == 0x30 && data[1] == 0x82 {
        let len = 4 + usize::from(u16::from_be_bytes([data[2], data[3]]));
        let (one, rest) = data.split_at(len.min(data.len()));
        out.push(CertificateDer::from(one.to_vec()));
        data = rest;
    }
    if out.is_empty() && !data.is_empty() {
        out.push(CertificateDer::from(data.to_vec()));
    }
    out
}

/// A CSR through the issuer's renewal (the path a proxy's CSR takes): never a panic; a certificate is
/// only issued for a CSR whose signature verifies, and it names the renewing identity.
pub fn csr(data: &[u8]) {
    let pem = super::text(data);
    let key = weft_certs::csr_key_sha256(&pem);
    let m = &*MESH;
    let Ok(resp) = m.issuer.renew(&m.workload, None, &pem) else {
        return;
    };
    assert!(
        key.is_ok(),
        "issued for a CSR whose signature does not verify"
    );
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(resp.chain_pem.as_bytes())
            .collect::<Result<_, _>>()
            .expect("the issued chain is PEM");
    let facts = weft_certs::fuzzing::certificate(&chain[0]).expect("the issued leaf parses");
    assert_eq!(facts.spiffe_id.ok().as_ref(), Some(&m.workload));
    let id = weft_certs::fuzzing::verify_peer(&chain, &m.bundle, &m.td, false, SystemTime::now())
        .expect("the issued chain verifies");
    assert_eq!(id, m.workload);
}

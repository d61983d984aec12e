//! Real rustls handshakes, in memory, between configs built by [`Identity`]: who is accepted, who is refused
//! and for what reason. Bad leaves come from [`crate::testing`]; the side under test always keeps its real
//! verifier, only the presented certificate is swapped.

use crate::ca::{CertificateAuthority, Validity};
use crate::csr::KeyAndCsr;
use crate::error::{CertError, VerifyError};
use crate::spiffe::{SpiffeId, TrustDomain};
use crate::testing::{issue, LeafSpec};
use crate::tls::{peer_id, verify_error, Identity};
use crate::verify::{self, PeerRole, Policy};
use crate::{x509, Credential, TrustBundle};
use rustls::client::ResolvesClientCert;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{
    ClientConfig, ClientConnection, ConnectionCommon, ServerConfig, ServerConnection,
    SignatureScheme,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{PrivateKeyDer, ServerName, UnixTime};
use std::io::{Read, Write};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

const HOUR: Duration = Duration::from_secs(3600);
const DAY: Duration = Duration::from_secs(24 * 3600);

// === fixtures ===

/// A CA and the bundle of its root: one trust domain's worth of PKI.
struct Mesh {
    ca: CertificateAuthority,
    td: TrustDomain,
}

impl Mesh {
    fn new(td: &str) -> Mesh {
        let td = TrustDomain::new(td).expect("td");
        // The CA window reaches into the past so tests can issue already-expired leaves.
        let validity = Validity {
            not_before: SystemTime::now() - 10 * DAY,
            not_after: SystemTime::now() + 10 * DAY,
        };
        let ca = CertificateAuthority::new_root(&td, validity).expect("root");
        Mesh { ca, td }
    }

    fn id(&self, sa: &str) -> SpiffeId {
        SpiffeId::for_workload(&self.td, "default", sa).expect("id")
    }

    fn bundle(&self) -> TrustBundle {
        TrustBundle::from_pem(&self.ca.root_pem()).expect("bundle")
    }

    fn credential(&self, sa: &str) -> Credential {
        credential_from(&self.ca, &self.id(sa))
    }

    fn identity(&self, sa: &str) -> Identity {
        Identity::new(self.credential(sa), self.bundle()).expect("identity")
    }
}

/// The production path: key and CSR here, signature by the CA, credential from the returned PEM.
fn credential_from(ca: &CertificateAuthority, id: &SpiffeId) -> Credential {
    let req = KeyAndCsr::generate(id).expect("csr");
    let chain = ca
        .sign_csr(req.csr_pem(), id, Validity::starting_now(HOUR))
        .expect("sign");
    Credential::from_pem(&chain, req.key_pem()).expect("credential")
}

fn certified((chain_pem, key_pem): &(String, String)) -> Arc<CertifiedKey> {
    let chain = x509::certs_from_pem(chain_pem, "test chain").expect("chain");
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).expect("key");
    Arc::new(CertifiedKey::from_der(chain, key, &x509::provider()).expect("certified key"))
}

/// Presents a fixed certificate (or none), whatever the identity's current one is.
#[derive(Debug)]
struct Present(Option<Arc<CertifiedKey>>);

impl ResolvesClientCert for Present {
    fn resolve(&self, _: &[&[u8]], _: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        self.0.clone()
    }
    fn has_certs(&self) -> bool {
        self.0.is_some()
    }
}

impl ResolvesServerCert for Present {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.0.clone()
    }
}

fn server_presenting(config: Arc<ServerConfig>, leaf: &(String, String)) -> Arc<ServerConfig> {
    let mut config = (*config).clone();
    config.cert_resolver = Arc::new(Present(Some(certified(leaf))));
    Arc::new(config)
}

fn client_presenting(
    config: Arc<ClientConfig>,
    leaf: Option<&(String, String)>,
) -> Arc<ClientConfig> {
    let mut config = (*config).clone();
    config.client_auth_cert_resolver = Arc::new(Present(leaf.map(certified)));
    Arc::new(config)
}

// === the in-memory handshake ===

struct Outcome {
    client: ClientConnection,
    server: ServerConnection,
    client_err: Option<rustls::Error>,
    server_err: Option<rustls::Error>,
}

impl Outcome {
    fn assert_ok(&self) {
        assert!(self.client_err.is_none(), "client: {:?}", self.client_err);
        assert!(self.server_err.is_none(), "server: {:?}", self.server_err);
        assert!(!self.client.is_handshaking() && !self.server.is_handshaking());
        assert_eq!(self.client.alpn_protocol(), Some(&b"h2"[..]));
        assert_eq!(self.server.alpn_protocol(), Some(&b"h2"[..]));
        assert_eq!(
            self.client.protocol_version(),
            Some(rustls::ProtocolVersion::TLSv1_3)
        );
    }

    /// The refusal on the side that verified, with its message.
    fn refused_by(&self, side: Side) -> (&VerifyError, String) {
        let err = match side {
            Side::Client => &self.client_err,
            Side::Server => &self.server_err,
        };
        let err = err
            .as_ref()
            .unwrap_or_else(|| panic!("{side:?} accepted the peer"));
        let reason = verify_error(err).unwrap_or_else(|| panic!("{side:?}: not a refusal: {err}"));
        (reason, err.to_string())
    }
}

#[derive(Clone, Copy, Debug)]
enum Side {
    Client,
    Server,
}

fn handshake(client: Arc<ClientConfig>, server: Arc<ServerConfig>) -> Outcome {
    let name = ServerName::try_from("peer.weft.test").expect("server name");
    let mut outcome = Outcome {
        client: ClientConnection::new(client, name).expect("client connection"),
        server: ServerConnection::new(server).expect("server connection"),
        client_err: None,
        server_err: None,
    };
    // Bounded: a TLS 1.3 handshake with client auth takes a handful of flights.
    for _ in 0..16 {
        let to_server = transfer(&mut outcome.client, &mut outcome.server);
        if outcome.server_err.is_none() {
            outcome.server_err = outcome.server.process_new_packets().err();
        }
        let to_client = transfer(&mut outcome.server, &mut outcome.client);
        if outcome.client_err.is_none() {
            outcome.client_err = outcome.client.process_new_packets().err();
        }
        if to_server == 0 && to_client == 0 {
            break;
        }
    }
    outcome
}

/// Moves every pending TLS byte from one end to the other; returns how many moved.
fn transfer<A, B>(from: &mut ConnectionCommon<A>, to: &mut ConnectionCommon<B>) -> usize {
    let mut bytes = Vec::new();
    while from.wants_write() {
        if from.write_tls(&mut bytes).is_err() {
            break;
        }
    }
    let mut rest = &bytes[..];
    while !rest.is_empty() {
        match to.read_tls(&mut rest) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
    }
    bytes.len()
}

// === acceptance ===

#[test]
fn mutual_tls_succeeds_and_both_sides_see_the_peer_id() {
    let mesh = Mesh::new("weft.test");
    let web = mesh.identity("web");
    let api = mesh.identity("api");
    let outcome = handshake(web.client_config(&api.id()), api.server_config());
    outcome.assert_ok();
    assert_eq!(peer_id(&outcome.server), Some(web.id()));
    assert_eq!(peer_id(&outcome.client), Some(api.id()));
}

#[test]
fn a_revoked_leaf_is_refused_both_ways_and_others_still_pass() {
    let mesh = Mesh::new("weft.test");
    let (web, api, db) = (
        mesh.identity("web"),
        mesh.identity("api"),
        mesh.identity("db"),
    );
    let web_serial = web.credential().serial_hex();
    let list = || crate::RevokedSerials::new([web_serial.clone()]);
    assert!(api.set_revoked(list()));
    assert!(!api.set_revoked(list()), "the same list is no change");
    assert!(api.is_revoked(web.credential().chain()[0].as_ref()));
    // The server refuses the revoked client, with the reason.
    let outcome = handshake(web.client_config(&api.id()), api.server_config());
    match outcome.server_err.as_ref().and_then(crate::verify_error) {
        Some(VerifyError::Revoked { presented, serial }) => {
            assert_eq!(presented, &web.id());
            assert_eq!(serial, &web_serial);
        }
        other => panic!("expected a revocation refusal, got {other:?}"),
    }
    // A client refuses a revoked server.
    db.set_revoked(list());
    let outcome = handshake(db.client_config(&web.id()), web.server_config());
    assert!(matches!(
        outcome.client_err.as_ref().and_then(crate::verify_error),
        Some(VerifyError::Revoked { .. })
    ));
    // Everyone else is unaffected, and an emptied list lets the leaf in again.
    handshake(db.client_config(&api.id()), api.server_config()).assert_ok();
    assert!(api.set_revoked(crate::RevokedSerials::default()));
    handshake(web.client_config(&api.id()), api.server_config()).assert_ok();
}

#[test]
fn leaves_under_an_intermediate_are_accepted() {
    let mesh = Mesh::new("weft.test");
    let int = mesh
        .ca
        .new_intermediate(Validity::starting_now(DAY))
        .expect("intermediate");
    let web = Identity::new(credential_from(&int, &mesh.id("web")), mesh.bundle()).expect("web");
    let api = mesh.identity("api");
    handshake(web.client_config(&api.id()), api.server_config()).assert_ok();
    handshake(api.client_config(&web.id()), web.server_config()).assert_ok();
}

#[test]
fn a_bundle_with_two_roots_accepts_leaves_from_both() {
    let old = Mesh::new("weft.test");
    let new = Mesh::new("weft.test");
    let both = TrustBundle::from_pem(&(old.ca.root_pem() + &new.ca.root_pem())).expect("bundle");
    let web = Identity::new(old.credential("web"), both.clone()).expect("web");
    let api = Identity::new(new.credential("api"), both).expect("api");
    handshake(web.client_config(&api.id()), api.server_config()).assert_ok();
    handshake(api.client_config(&web.id()), web.server_config()).assert_ok();

    // A peer still on the old root alone refuses the new leaf.
    let db = old.identity("db");
    let outcome = handshake(db.client_config(&api.id()), api.server_config());
    assert!(matches!(
        outcome.refused_by(Side::Client).0,
        VerifyError::UnknownIssuer
    ));
}

// === refusals: a bad leaf, presented from either side ===

/// How a case breaks the normal leaf for `spiffe://weft.test/ns/default/sa/api`.
type Break = fn(&mut LeafSpec);
type Matches = fn(&VerifyError) -> bool;

fn bad_leaf_cases() -> Vec<(&'static str, Break, Matches, &'static str)> {
    vec![
        (
            "no URI SAN",
            |s| {
                s.uris.clear();
                s.dns = vec!["api.weft.test".to_owned()];
            },
            |e| matches!(e, VerifyError::NoUriSan),
            "has no URI SAN",
        ),
        (
            "several URI SANs",
            |s| {
                s.uris
                    .push("spiffe://weft.test/ns/default/sa/admin".to_owned())
            },
            |e| matches!(e, VerifyError::SeveralUriSans { count: 2 }),
            "has 2 URI SANs",
        ),
        (
            "URI SAN that is no SPIFFE ID",
            |s| s.uris = vec!["https://api.weft.test/".to_owned()],
            |e| matches!(e, VerifyError::NotSpiffe { .. }),
            "is not a SPIFFE ID",
        ),
        (
            "another trust domain",
            |s| s.uris = vec!["spiffe://other.test/ns/default/sa/api".to_owned()],
            |e| matches!(e, VerifyError::WrongTrustDomain { .. }),
            "expected \"weft.test\" but peer presented spiffe://other.test/ns/default/sa/api",
        ),
        (
            "expired",
            |s| {
                s.validity = Validity {
                    not_before: SystemTime::now() - 2 * DAY,
                    not_after: SystemTime::now() - DAY,
                }
            },
            |e| matches!(e, VerifyError::Expired { .. }),
            "certificate expired",
        ),
        (
            "not yet valid",
            |s| {
                s.validity = Validity {
                    not_before: SystemTime::now() + DAY,
                    not_after: SystemTime::now() + 2 * DAY,
                }
            },
            |e| matches!(e, VerifyError::NotYetValid { .. }),
            "not valid yet",
        ),
        (
            "keyUsage without digitalSignature",
            |s| s.digital_signature = false,
            |e| matches!(e, VerifyError::BadKeyUsage { .. }),
            "lacks digitalSignature",
        ),
        (
            "a CA certificate as leaf",
            |s| s.is_ca = true,
            |e| matches!(e, VerifyError::IsCa),
            "CA:true",
        ),
    ]
}

#[test]
fn client_refuses_bad_server_leaves_with_the_reason() {
    let mesh = Mesh::new("weft.test");
    let web = mesh.identity("web");
    let api = mesh.identity("api");
    for (name, break_leaf, matches, reason) in bad_leaf_cases() {
        let mut spec = LeafSpec::for_id(&mesh.id("api"));
        break_leaf(&mut spec);
        let leaf = issue(&mesh.ca, &spec);
        let outcome = handshake(
            web.client_config(&mesh.id("api")),
            server_presenting(api.server_config(), &leaf),
        );
        let (err, message) = outcome.refused_by(Side::Client);
        assert!(matches(err), "{name}: unexpected refusal {err}");
        assert!(
            message.contains(reason),
            "{name}: {message:?} lacks {reason:?}"
        );
        assert!(outcome.server_err.is_some(), "{name}: server saw no alert");
    }
}

#[test]
fn server_refuses_bad_client_leaves_with_the_reason() {
    let mesh = Mesh::new("weft.test");
    let web = mesh.identity("web");
    let api = mesh.identity("api");
    for (name, break_leaf, matches, reason) in bad_leaf_cases() {
        let mut spec = LeafSpec::for_id(&mesh.id("api"));
        break_leaf(&mut spec);
        let leaf = issue(&mesh.ca, &spec);
        let outcome = handshake(
            client_presenting(web.client_config(&api.id()), Some(&leaf)),
            api.server_config(),
        );
        let (err, message) = outcome.refused_by(Side::Server);
        assert!(matches(err), "{name}: unexpected refusal {err}");
        assert!(
            message.contains(reason),
            "{name}: {message:?} lacks {reason:?}"
        );
        assert_eq!(
            peer_id(&outcome.server),
            None,
            "{name}: refused peer has no id"
        );
    }
}

#[test]
fn extended_key_usage_must_fit_the_role() {
    let mesh = Mesh::new("weft.test");
    let web = mesh.identity("web");
    let api = mesh.identity("api");

    let mut client_only = LeafSpec::for_id(&api.id());
    client_only.server_auth = false;
    let leaf = issue(&mesh.ca, &client_only);
    let outcome = handshake(
        web.client_config(&api.id()),
        server_presenting(api.server_config(), &leaf),
    );
    let (err, message) = outcome.refused_by(Side::Client);
    assert!(matches!(err, VerifyError::BadKeyUsage { .. }), "{err}");
    assert!(
        message.contains("extended key usage lacks serverAuth"),
        "{message}"
    );

    let mut server_only = LeafSpec::for_id(&web.id());
    server_only.client_auth = false;
    let leaf = issue(&mesh.ca, &server_only);
    let outcome = handshake(
        client_presenting(web.client_config(&api.id()), Some(&leaf)),
        api.server_config(),
    );
    let (err, message) = outcome.refused_by(Side::Server);
    assert!(matches!(err, VerifyError::BadKeyUsage { .. }), "{err}");
    assert!(
        message.contains("extended key usage lacks clientAuth"),
        "{message}"
    );

    // The same serverAuth-only leaf is fine where a server is expected.
    let outcome = handshake(
        api.client_config(&web.id()),
        server_presenting(web.server_config(), &leaf),
    );
    outcome.assert_ok();
}

#[test]
fn a_chain_to_an_unknown_root_is_refused_both_ways() {
    let mesh = Mesh::new("weft.test");
    let stranger_mesh = Mesh::new("weft.test");
    let web = mesh.identity("web");
    let api = mesh.identity("api");
    let stranger = stranger_mesh.identity("api");

    let outcome = handshake(web.client_config(&api.id()), stranger.server_config());
    let (err, message) = outcome.refused_by(Side::Client);
    assert!(matches!(err, VerifyError::UnknownIssuer), "{err}");
    assert!(
        message.contains("does not chain to a root of the trust bundle"),
        "{message}"
    );

    // The client trusts the server, so it gets as far as presenting the stranger's leaf.
    let stranger_leaf = issue(&stranger_mesh.ca, &LeafSpec::for_id(&web.id()));
    let outcome = handshake(
        client_presenting(web.client_config(&api.id()), Some(&stranger_leaf)),
        api.server_config(),
    );
    let (err, _) = outcome.refused_by(Side::Server);
    assert!(matches!(err, VerifyError::UnknownIssuer), "{err}");
}

#[test]
fn a_server_other_than_the_expected_one_is_refused() {
    let mesh = Mesh::new("weft.test");
    let web = mesh.identity("web");
    let api = mesh.identity("api");
    let outcome = handshake(web.client_config(&mesh.id("db")), api.server_config());
    let (err, message) = outcome.refused_by(Side::Client);
    assert!(matches!(err, VerifyError::IdentityMismatch { .. }), "{err}");
    assert!(
        message.contains(
            "expected spiffe://weft.test/ns/default/sa/db but peer presented spiffe://weft.test/ns/default/sa/api"
        ),
        "{message}"
    );
}

#[test]
fn a_client_without_a_certificate_is_refused() {
    let mesh = Mesh::new("weft.test");
    let web = mesh.identity("web");
    let api = mesh.identity("api");
    let outcome = handshake(
        client_presenting(web.client_config(&api.id()), None),
        api.server_config(),
    );
    let err = outcome.server_err.as_ref().expect("server refused");
    assert!(
        matches!(err, rustls::Error::NoCertificatesPresented),
        "{err}"
    );
    assert_eq!(peer_id(&outcome.server), None);
}

#[test]
fn an_optional_client_certificate_is_verified_when_presented() {
    let mesh = Mesh::new("weft.test");
    let control = mesh.identity("control");
    let web = mesh.identity("web");
    // Without a certificate: the handshake completes and there is no peer identity.
    let bootstrap = crate::tls::bootstrap_client_config(mesh.bundle(), &control.id());
    let outcome = handshake(bootstrap, control.server_config_optional_client());
    outcome.assert_ok();
    assert_eq!(peer_id(&outcome.server), None);
    // With one: verified as usual, and the identity is seen.
    let outcome = handshake(
        web.client_config(&control.id()),
        control.server_config_optional_client(),
    );
    outcome.assert_ok();
    assert_eq!(peer_id(&outcome.server), Some(web.id()));
    // A certificate from another CA is still refused.
    let other = Mesh::new("weft.test");
    let outcome = handshake(
        client_presenting(
            web.client_config(&control.id()),
            Some(&issue(&other.ca, &LeafSpec::for_id(&other.id("web")))),
        ),
        control.server_config_optional_client(),
    );
    let (err, _) = outcome.refused_by(Side::Server);
    assert!(matches!(err, VerifyError::UnknownIssuer), "{err}");
}

#[test]
fn bootstrap_checks_the_server_chain_and_identity() {
    let mesh = Mesh::new("weft.test");
    let control = mesh.identity("control");
    let impostor = mesh.identity("impostor");
    let outcome = handshake(
        crate::tls::bootstrap_client_config(mesh.bundle(), &control.id()),
        impostor.server_config_optional_client(),
    );
    let (err, _) = outcome.refused_by(Side::Client);
    assert!(matches!(err, VerifyError::IdentityMismatch { .. }), "{err}");
    let other = Mesh::new("weft.test");
    let outcome = handshake(
        crate::tls::bootstrap_client_config(other.bundle(), &control.id()),
        control.server_config_optional_client(),
    );
    let (err, _) = outcome.refused_by(Side::Client);
    assert!(matches!(err, VerifyError::UnknownIssuer), "{err}");
}

// === rotation ===

#[test]
fn update_switches_the_leaf_for_new_handshakes_only() {
    let mesh = Mesh::new("weft.test");
    let web = mesh.identity("web");
    let api = mesh.identity("api");
    // Configs built once, before the update, as a proxy would hold them.
    let client_config = web.client_config(&api.id());
    let server_config = api.server_config();

    let mut first = handshake(client_config.clone(), server_config.clone());
    first.assert_ok();
    let old_leaf = api.credential().chain()[0].clone();
    assert_eq!(
        first.client.peer_certificates().expect("certs")[0],
        old_leaf
    );

    let rotated = mesh.credential("api");
    let new_leaf = rotated.chain()[0].clone();
    assert_ne!(new_leaf, old_leaf);
    api.update(rotated, mesh.bundle()).expect("update");
    assert_eq!(api.credential().chain()[0], new_leaf);

    let second = handshake(client_config, server_config);
    second.assert_ok();
    assert_eq!(
        second.client.peer_certificates().expect("certs")[0],
        new_leaf
    );

    // The connection made before the update still carries data.
    first.client.writer().write_all(b"ping").expect("write");
    transfer(&mut first.client, &mut first.server);
    first.server.process_new_packets().expect("process");
    let mut got = [0u8; 4];
    first.server.reader().read_exact(&mut got).expect("read");
    assert_eq!(&got, b"ping");
}

#[test]
fn update_refuses_another_identity_or_an_untrusted_leaf() {
    let mesh = Mesh::new("weft.test");
    let api = mesh.identity("api");
    let before = api.credential().serial_hex();

    let err = api
        .update(mesh.credential("web"), mesh.bundle())
        .expect_err("other id");
    assert!(matches!(err, CertError::IdentityChanged { .. }), "{err}");

    let stranger = Mesh::new("weft.test");
    let err = api
        .update(stranger.credential("api"), mesh.bundle())
        .expect_err("untrusted");
    assert!(
        matches!(
            &err,
            CertError::NotTrusted {
                source: VerifyError::UnknownIssuer,
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(
        api.credential().serial_hex(),
        before,
        "failed update changes nothing"
    );
}

#[test]
fn identity_refuses_a_credential_outside_the_bundles_trust_domain() {
    let mesh = Mesh::new("weft.test");
    let other = Mesh::new("other.test");
    let err = Identity::new(other.credential("api"), mesh.bundle()).expect_err("other td");
    assert!(
        matches!(err, CertError::TrustDomainMismatch { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("weft.test"), "{err}");
}

#[test]
fn identity_loads_an_expired_credential_that_chains() {
    // A proxy restarting with a stale leaf must come up and rotate; peers refuse the leaf meanwhile.
    let mesh = Mesh::new("weft.test");
    let mut spec = LeafSpec::for_id(&mesh.id("api"));
    spec.validity = Validity {
        not_before: SystemTime::now() - 2 * DAY,
        not_after: SystemTime::now() - DAY,
    };
    let (chain, key) = issue(&mesh.ca, &spec);
    let cred = Credential::from_pem(&chain, &key).expect("credential");
    assert!(Identity::new(cred, mesh.bundle()).is_ok());
}

// === verification at an explicit time ===

#[test]
fn verification_follows_the_given_time() {
    let mesh = Mesh::new("weft.test");
    let cred = mesh.credential("api");
    let bundle = mesh.bundle();
    let policy = Policy {
        role: PeerRole::Server,
        trust_domain: &mesh.td,
        expected: Some(cred.id()),
        revoked: None,
    };
    let at = |t: SystemTime| {
        UnixTime::since_unix_epoch(
            t.duration_since(SystemTime::UNIX_EPOCH)
                .expect("after epoch"),
        )
    };
    let check = |t: SystemTime| {
        verify::verify_chain(
            &cred.chain()[0],
            &[],
            &bundle,
            &policy,
            at(t),
            &x509::provider(),
        )
    };
    assert_eq!(check(SystemTime::now()).expect("valid now"), *cred.id());
    assert!(matches!(
        check(SystemTime::now() + 2 * HOUR),
        Err(VerifyError::Expired { .. })
    ));
    assert!(matches!(
        check(SystemTime::now() - 2 * HOUR),
        Err(VerifyError::NotYetValid { .. })
    ));
}

#[test]
fn a_tampered_signature_is_refused() {
    let mesh = Mesh::new("weft.test");
    let cred = mesh.credential("api");
    let mut der = cred.chain()[0].as_ref().to_vec();
    // The last byte belongs to the signature's s value; changing it keeps the DER well formed.
    let last = der.len() - 1;
    der[last] ^= 0x01;
    let policy = Policy {
        role: PeerRole::Server,
        trust_domain: &mesh.td,
        expected: None,
        revoked: None,
    };
    let now = UnixTime::now();
    let err = verify::verify_chain(
        &der.into(),
        &[],
        &mesh.bundle(),
        &policy,
        now,
        &x509::provider(),
    )
    .expect_err("tampered");
    assert!(matches!(err, VerifyError::BadSignature), "{err}");
}

#[test]
fn identity_and_its_parts_can_cross_tasks() {
    fn shareable<T: Send + Sync + Clone + 'static>() {}
    shareable::<Identity>();
    shareable::<Credential>();
    shareable::<TrustBundle>();
    shareable::<SpiffeId>();
}

// === expiry grace and the mesh's clock ===

#[test]
fn an_expired_chain_passes_only_within_the_grace_granted() {
    let mesh = Mesh::new("weft.test");
    let mut spec = LeafSpec::for_id(&mesh.id("api"));
    spec.validity = Validity {
        not_before: SystemTime::now() - 2 * HOUR,
        not_after: SystemTime::now() - 600 * Duration::from_secs(1),
    };
    let (chain, key) = issue(&mesh.ca, &spec);
    let cred = Credential::from_pem(&chain, &key).expect("credential");
    let bundle = mesh.bundle();
    let policy = Policy {
        role: PeerRole::Client,
        trust_domain: &mesh.td,
        expected: None,
        revoked: None,
    };
    let check = |grace: Duration| {
        verify::verify_chain_with_grace(
            &cred.chain()[0],
            &[],
            &bundle,
            &policy,
            UnixTime::now(),
            &x509::provider(),
            grace,
        )
    };
    assert_eq!(check(HOUR).expect("within an hour's grace"), *cred.id());
    assert!(matches!(
        check(Duration::from_secs(300)),
        Err(VerifyError::Expired { .. })
    ));
    assert!(matches!(
        check(Duration::ZERO),
        Err(VerifyError::Expired { .. })
    ));
}

#[test]
fn expiry_is_judged_on_the_mesh_clock() {
    let mesh = Mesh::new("weft.test");
    let id = mesh.identity("api");
    assert_eq!(id.clock_offset_secs(), 0);
    assert!(id.expired_at().is_none());
    // This machine 30 s ahead: the mesh's clock is 30 s behind ours.
    id.set_clock_offset(Duration::from_secs(30), Duration::ZERO);
    assert_eq!(id.clock_offset_secs(), 30);
    let lag = SystemTime::now()
        .duration_since(id.mesh_now())
        .expect("mesh clock behind");
    assert!((29..=30).contains(&lag.as_secs()), "{lag:?}");
    // Two hours behind: the one-hour leaf has expired on the mesh's clock.
    id.set_clock_offset(Duration::ZERO, 2 * HOUR);
    assert_eq!(id.clock_offset_secs(), -7200);
    assert_eq!(
        id.expired_at().map(x509::unix_secs),
        Some(x509::unix_secs(id.credential().not_after()))
    );
}

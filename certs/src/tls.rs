//! The live identity of a proxy and the rustls configurations of the peer hop built from it.
//!
//! An [`Identity`] holds the current credential and trust bundle behind an `ArcSwap`. The configurations it
//! hands out read that state on every handshake, so [`Identity::update`] (rotation) reaches new handshakes
//! without rebuilding anything, while established connections keep the keys they were made with.

use crate::bundle::TrustBundle;
use crate::credential::Credential;
use crate::error::{CertError, VerifyError};
use crate::revoked::RevokedSerials;
use crate::spiffe::{SpiffeId, TrustDomain};
use crate::verify::{self, ClientVerifier, PeerRole, Policy, ServerVerifier, Trust};
use crate::x509;
use arc_swap::ArcSwap;
use rustls::client::{ResolvesClientCert, Resumption};
use rustls::server::{ClientHello, NoServerSessionStorage, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, ServerConfig, SignatureScheme};
use rustls_pki_types::UnixTime;
use std::fmt;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The ALPN protocol of the peer hop: HTTP/2 carries both requests and opaque TCP streams.
pub const ALPN_H2: &[u8] = b"h2";

/// A proxy's own identity: credential + trust bundle, swappable for rotation. Clones share the state.
#[derive(Clone)]
pub struct Identity {
    shared: Arc<Shared>,
}

/// What the identity and every configuration built from it share.
pub(crate) struct Shared {
    /// Fixed for the life of the identity; rotation may change keys, never who we are.
    pub(crate) id: SpiffeId,
    pub(crate) trust_domain: TrustDomain,
    current: ArcSwap<State>,
    /// Peer leaves to refuse; replaced whole when the control plane pushes a new list.
    revoked: ArcSwap<RevokedSerials>,
    /// How far this machine's clock runs ahead of the mesh's (the issuer's), in seconds; negative when
    /// behind. Certificates are checked on the mesh's clock, so a small skew changes nothing.
    clock_offset: AtomicI64,
}

struct State {
    credential: Arc<Credential>,
    bundle: Arc<TrustBundle>,
}

impl Shared {
    pub(crate) fn bundle(&self) -> Arc<TrustBundle> {
        self.current.load().bundle.clone()
    }

    pub(crate) fn revoked(&self) -> Arc<RevokedSerials> {
        self.revoked.load_full()
    }

    fn certified_key(&self) -> Arc<CertifiedKey> {
        self.current.load().credential.certified_key()
    }

    /// `now` (this machine's clock) on the mesh's clock.
    pub(crate) fn mesh_time(&self, now: UnixTime) -> UnixTime {
        let offset = self.clock_offset.load(Ordering::Relaxed);
        let secs = now.as_secs().saturating_add_signed(offset.saturating_neg());
        UnixTime::since_unix_epoch(Duration::from_secs(secs))
    }
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.shared.current.load();
        f.debug_struct("Identity")
            .field("credential", &state.credential)
            .field("bundle", &state.bundle)
            .finish()
    }
}

impl Identity {
    /// Checks that the credential chains to the bundle (as both client and server) and that its trust
    /// domain is one the bundle's roots name, if they name any.
    pub fn new(cred: Credential, bundle: TrustBundle) -> Result<Identity, CertError> {
        check_credential(&cred, &bundle)?;
        let id = cred.id().clone();
        let trust_domain = id.to_trust_domain();
        let state = State {
            credential: Arc::new(cred),
            bundle: Arc::new(bundle),
        };
        Ok(Identity {
            shared: Arc::new(Shared {
                id,
                trust_domain,
                current: ArcSwap::from_pointee(state),
                revoked: ArcSwap::from_pointee(RevokedSerials::default()),
                clock_offset: AtomicI64::new(0),
            }),
        })
    }

    /// Replaces credential and bundle for new handshakes. The new credential must be for the same ID and
    /// pass the same checks as in [`Identity::new`]; on error nothing changes.
    pub fn update(&self, cred: Credential, bundle: TrustBundle) -> Result<(), CertError> {
        if cred.id() != &self.shared.id {
            return Err(CertError::IdentityChanged {
                current: self.shared.id.clone(),
                new: cred.id().clone(),
            });
        }
        check_credential(&cred, &bundle)?;
        self.shared.current.store(Arc::new(State {
            credential: Arc::new(cred),
            bundle: Arc::new(bundle),
        }));
        Ok(())
    }

    pub fn id(&self) -> SpiffeId {
        self.shared.id.clone()
    }

    /// Sets how far this machine's clock runs ahead of the mesh's (negative: behind), as measured
    /// against the control plane; peer certificates are checked, and expiry judged, on the mesh's clock.
    pub fn set_clock_offset(&self, ahead: Duration, behind: Duration) {
        let secs = |d: Duration| i64::try_from(d.as_secs()).unwrap_or(i64::MAX);
        self.shared
            .clock_offset
            .store(secs(ahead).saturating_sub(secs(behind)), Ordering::Relaxed);
    }

    /// Seconds this machine's clock runs ahead of the mesh's (negative: behind).
    pub fn clock_offset_secs(&self) -> i64 {
        self.shared.clock_offset.load(Ordering::Relaxed)
    }

    /// When the current certificate expired, if it has (on the mesh's clock): a proxy must not use it
    /// any more, since peers refuse it.
    pub fn expired_at(&self) -> Option<SystemTime> {
        let not_after = self.shared.current.load().credential.not_after();
        (self.mesh_now() > not_after).then_some(not_after)
    }

    /// Now, on the mesh's clock.
    pub fn mesh_now(&self) -> SystemTime {
        let offset = self.clock_offset_secs();
        let shift = Duration::from_secs(offset.unsigned_abs());
        if offset >= 0 {
            SystemTime::now() - shift
        } else {
            SystemTime::now() + shift
        }
    }

    /// Replaces the list of revoked peer serials both verifiers refuse from the next handshake on.
    /// True if the list changed. Connections already established are the caller's to close (see
    /// [`Identity::is_revoked`]).
    pub fn set_revoked(&self, revoked: RevokedSerials) -> bool {
        if *self.shared.revoked.load_full() == revoked {
            return false;
        }
        self.shared.revoked.store(Arc::new(revoked));
        true
    }

    /// Whether a peer's leaf (DER) is on the current revocation list.
    pub fn is_revoked(&self, leaf_der: &[u8]) -> bool {
        let revoked = self.shared.revoked.load();
        !revoked.is_empty()
            && crate::revoked::leaf_serial_hex(leaf_der).is_some_and(|s| revoked.contains(&s))
    }

    pub fn credential(&self) -> Arc<Credential> {
        self.shared.current.load().credential.clone()
    }

    pub fn bundle(&self) -> Arc<TrustBundle> {
        self.shared.current.load().bundle.clone()
    }

    /// Client side of the peer hop. Presents our current leaf; accepts only a server whose chain reaches
    /// the current bundle (EKU serverAuth) and whose single URI SAN is exactly `expected`. TLS 1.3, ALPN h2.
    ///
    /// The config follows rotation by itself: build one per expected identity and reuse it. The server name
    /// passed to rustls is not checked (the SPIFFE ID is); an IP address is fine.
    pub fn client_config(&self, expected: &SpiffeId) -> Arc<ClientConfig> {
        let provider = x509::provider();
        let verifier = ServerVerifier {
            trust: Trust::Live(self.shared.clone()),
            expected: expected.clone(),
            provider: provider.clone(),
        };
        client_config_with(
            provider,
            Arc::new(verifier),
            Some(Arc::new(CurrentLeaf(self.shared.clone()))),
        )
    }

    /// Server side of the peer hop. Requires a client certificate that reaches the current bundle (EKU
    /// clientAuth) with exactly one URI SAN, a SPIFFE ID in our trust domain; presents our current leaf.
    /// TLS 1.3, ALPN h2. Read the client's identity with [`peer_id`].
    pub fn server_config(&self) -> Arc<ServerConfig> {
        self.server_config_with(true, Duration::ZERO)
    }

    /// As [`server_config`](Self::server_config), but a client certificate is optional: when one is
    /// presented it is verified exactly as there; without one the handshake completes and
    /// [`peer_id`] is `None`. For an endpoint that also serves callers without an identity yet (the
    /// control plane's certificate signing).
    pub fn server_config_optional_client(&self) -> Arc<ServerConfig> {
        self.server_config_with(false, Duration::ZERO)
    }

    /// As [`server_config_optional_client`](Self::server_config_optional_client), but a client
    /// certificate that expired at most `expired_grace` ago is still accepted (everything else about it
    /// is checked as usual). For the control plane's API, so a proxy whose certificate expired while
    /// the control plane was down can renew it; the caller decides what such a client may do (read its
    /// expiry from the leaf).
    pub fn server_config_with_expired_grace(&self, expired_grace: Duration) -> Arc<ServerConfig> {
        self.server_config_with(false, expired_grace)
    }

    fn server_config_with(&self, mandatory: bool, expired_grace: Duration) -> Arc<ServerConfig> {
        let provider = x509::provider();
        let verifier = ClientVerifier {
            shared: self.shared.clone(),
            provider: provider.clone(),
            mandatory,
            expired_grace,
        };
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .expect("the aws-lc-rs provider supports TLS 1.3")
            .with_client_cert_verifier(Arc::new(verifier))
            .with_cert_resolver(Arc::new(CurrentLeaf(self.shared.clone())));
        config.alpn_protocols = vec![ALPN_H2.to_vec()];
        // No resumption, as on the client side: each connection is verified against the current bundle.
        config.session_storage = Arc::new(NoServerSessionStorage {});
        config.send_tls13_tickets = 0;
        Arc::new(config)
    }
}

/// Client configuration for a caller without an identity of its own (a proxy fetching its first
/// certificate): presents no certificate; accepts only a server whose chain reaches `bundle` (EKU
/// serverAuth) and whose SPIFFE ID is exactly `expected`. TLS 1.3, ALPN h2.
pub fn bootstrap_client_config(bundle: TrustBundle, expected: &SpiffeId) -> Arc<ClientConfig> {
    let provider = x509::provider();
    let verifier = ServerVerifier {
        trust: Trust::Fixed {
            bundle: Arc::new(bundle),
            trust_domain: expected.to_trust_domain(),
        },
        expected: expected.clone(),
        provider: provider.clone(),
    };
    client_config_with(provider, Arc::new(verifier), None)
}

/// TLS 1.3, ALPN h2, no resumption (a resumed session skips certificate checks; every connection must
/// meet the current bundle), with `verifier` and, if given, a client certificate from `leaf`.
pub(crate) fn client_config_with(
    provider: Arc<rustls::crypto::CryptoProvider>,
    verifier: Arc<dyn rustls::client::danger::ServerCertVerifier>,
    leaf: Option<Arc<dyn ResolvesClientCert>>,
) -> Arc<ClientConfig> {
    let builder = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("the aws-lc-rs provider supports TLS 1.3")
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let mut config = match leaf {
        Some(resolver) => builder.with_client_cert_resolver(resolver),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    config.resumption = Resumption::disabled();
    Arc::new(config)
}

/// The verified peer identity of an established connection: the SPIFFE ID of its leaf.
///
/// `None` before the handshake completes, or if the peer presented no certificate. On a connection made
/// with an [`Identity`] config the leaf has already been verified, so this only reads it.
pub fn peer_id(conn: &rustls::CommonState) -> Option<SpiffeId> {
    let leaf = conn.peer_certificates()?.first()?;
    let parsed = x509::parse(leaf, String::new).ok()?;
    x509::spiffe_id(&parsed).ok()
}

/// The reason our verifier refused a peer, if `err` is such a refusal (as opposed to an I/O or protocol
/// error, or an alert from a peer that refused us: the alert carries no reason).
pub fn verify_error(err: &rustls::Error) -> Option<&VerifyError> {
    match err {
        rustls::Error::InvalidCertificate(rustls::CertificateError::Other(other)) => {
            other.0.downcast_ref::<VerifyError>()
        }
        _ => None,
    }
}

/// Our own credential must pass what a peer will check, in both roles.
fn check_credential(cred: &Credential, bundle: &TrustBundle) -> Result<(), CertError> {
    let id = cred.id();
    let domains = bundle.trust_domains();
    if !domains.is_empty() && !domains.iter().any(|td| td.as_str() == id.trust_domain()) {
        return Err(CertError::TrustDomainMismatch {
            id: id.clone(),
            bundle: domains.iter().map(|td| td.to_string()).collect(),
        });
    }
    let trust_domain = id.to_trust_domain();
    let now = time_within(cred);
    let (leaf, intermediates) = match cred.chain() {
        [leaf, rest @ ..] => (leaf, rest),
        [] => unreachable!("a credential always holds its leaf"),
    };
    for role in [PeerRole::Server, PeerRole::Client] {
        let policy = Policy {
            role,
            trust_domain: &trust_domain,
            expected: Some(id),
            revoked: None,
        };
        verify::verify_chain(leaf, intermediates, bundle, &policy, now, &x509::provider())
            .map_err(|source| CertError::NotTrusted {
                id: id.clone(),
                source,
            })?;
    }
    Ok(())
}

/// Now, moved into the leaf's validity window. Loading checks trust, not freshness: a proxy restarting
/// with an expired leaf must still come up (and rotate), and peers refuse the expired leaf anyway.
fn time_within(cred: &Credential) -> UnixTime {
    let now = SystemTime::now();
    let at = if now < cred.not_before() {
        cred.not_before()
    } else if now > cred.not_after() {
        tracing::warn!(id = %cred.id(), serial = %cred.serial_hex(), "loaded credential has expired");
        cred.not_after()
    } else {
        now
    };
    UnixTime::since_unix_epoch(at.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO))
}

/// Hands rustls whatever leaf is current, on both ends of the hop.
struct CurrentLeaf(Arc<Shared>);

impl fmt::Debug for CurrentLeaf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("CurrentLeaf").field(&self.0.id).finish()
    }
}

impl ResolvesClientCert for CurrentLeaf {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.0.certified_key())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

impl ResolvesServerCert for CurrentLeaf {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.certified_key())
    }
}

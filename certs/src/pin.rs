//! Pinning the mesh CA by the SHA-256 fingerprint of its root certificate, for a proxy started with a
//! fingerprint instead of a bundle file.
//!
//! The control plane sends its root at the end of its chain. A first, probing handshake only records that
//! chain (and is then failed on purpose, so nothing is ever sent over it); the root whose fingerprint
//! matches becomes the bundle, and the real connection verifies the control plane against it as usual.

use crate::bundle::TrustBundle;
use crate::error::CertError;
use crate::x509;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use sha2::{Digest, Sha256};
use std::sync::{Arc, Mutex};

/// `sha256:AB:CD:...` of a certificate's DER.
pub fn fingerprint(der: &[u8]) -> String {
    let hex: Vec<String> = Sha256::digest(der)
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect();
    format!("sha256:{}", hex.join(":"))
}

/// Reads `sha256:AB:CD:...`, `AB:CD:...` or plain hex (any case).
pub fn parse_fingerprint(s: &str) -> Result<[u8; 32], CertError> {
    let bad = |why: &str| CertError::BadFingerprint {
        input: s.to_string(),
        reason: why.to_string(),
    };
    let hex: String = s
        .trim()
        .strip_prefix("sha256:")
        .unwrap_or(s.trim())
        .chars()
        .filter(|c| *c != ':')
        .collect();
    if hex.len() != 64 {
        return Err(bad("a SHA-256 fingerprint has 64 hex digits"));
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).map_err(|_| bad("not hex"))?;
    }
    Ok(out)
}

/// The bundle of the root in `chain` whose fingerprint is `pin`; it must be a self-signed CA.
pub fn bundle_from_chain(
    chain: &[CertificateDer<'_>],
    pin: &[u8; 32],
) -> Result<TrustBundle, CertError> {
    let root = chain
        .iter()
        .find(|c| Sha256::digest(c.as_ref()).as_slice() == pin)
        .ok_or_else(|| CertError::PinMismatch {
            presented: chain.iter().map(|c| fingerprint(c.as_ref())).collect(),
        })?;
    let parsed = x509::parse(root, || "the pinned root".to_owned())?;
    if !(x509::is_ca(&parsed) && x509::is_self_signed(&parsed)) {
        return Err(CertError::PinNotRoot);
    }
    TrustBundle::from_pem(&x509::cert_to_pem(root))
}

/// Where a probing handshake leaves the chain it was shown.
pub type ChainSlot = Arc<Mutex<Option<Vec<CertificateDer<'static>>>>>;

/// A client config whose handshakes record the server's chain and then fail: nothing is ever sent.
pub fn chain_probe() -> (Arc<ClientConfig>, ChainSlot) {
    let slot = ChainSlot::default();
    let provider = x509::provider();
    let verifier = Recorder {
        slot: slot.clone(),
        provider: provider.clone(),
    };
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("the aws-lc-rs provider supports TLS 1.3")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    config.alpn_protocols = vec![crate::tls::ALPN_H2.to_vec()];
    (Arc::new(config), slot)
}

#[derive(Debug)]
struct Recorder {
    slot: ChainSlot,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ServerCertVerifier for Recorder {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let chain = std::iter::once(end_entity)
            .chain(intermediates)
            .map(|c| c.clone().into_owned())
            .collect();
        *self.slot.lock().unwrap_or_else(|e| e.into_inner()) = Some(chain);
        Err(rustls::Error::General(
            "chain recorded; this probe never completes".into(),
        ))
    }

    fn verify_tls12_signature(
        &self,
        _m: &[u8],
        _c: &CertificateDer<'_>,
        _d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::General("TLS 1.2 is not used".into()))
    }

    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            m,
            c,
            d,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{CertificateAuthority, TrustDomain, Validity};
    use std::time::Duration;

    #[test]
    fn fingerprints_round_trip_and_pick_the_root() {
        let td = TrustDomain::new("pin.test").unwrap();
        let root =
            CertificateAuthority::new_root(&td, Validity::starting_now(Duration::from_secs(3600)))
                .unwrap();
        let inter = root
            .new_intermediate(Validity::starting_now(Duration::from_secs(1800)))
            .unwrap();
        let chain = x509::certs_from_pem(&inter.full_chain_pem(), "chain").unwrap();
        let root_der = chain.last().unwrap().clone();
        let fp = fingerprint(root_der.as_ref());
        assert!(fp.starts_with("sha256:") && fp.len() == 7 + 64 + 31, "{fp}");
        let pin = parse_fingerprint(&fp).unwrap();
        assert_eq!(
            parse_fingerprint(&fp.replace(':', "").replace("sha256", "").to_lowercase()).unwrap(),
            pin
        );
        let bundle = bundle_from_chain(&chain, &pin).unwrap();
        assert_eq!(bundle.trust_domains()[0].as_str(), "pin.test");
        // The intermediate is a CA but not self-signed: pinning it is refused.
        let inter_pin = parse_fingerprint(&fingerprint(chain[0].as_ref())).unwrap();
        assert!(matches!(
            bundle_from_chain(&chain, &inter_pin),
            Err(CertError::PinNotRoot)
        ));
        let other = [7u8; 32];
        let e = bundle_from_chain(&chain, &other).unwrap_err();
        assert!(e.to_string().contains("sha256:"), "{e}");
        assert!(parse_fingerprint("sha256:zz").is_err());
    }
}

//! For unit tests: a workload identity signed by a fresh test CA.

use std::time::Duration;
use weft_certs::{testing, CertificateAuthority, Credential, Identity, SpiffeId, TrustBundle};
use weft_certs::{TrustDomain, Validity};

/// The identity `spiffe://weft.local/ns/shop/sa/web`, valid for an hour.
pub fn web() -> Identity {
    let td = TrustDomain::new("weft.local").expect("trust domain");
    let ca = CertificateAuthority::new_root(&td, Validity::starting_now(Duration::from_secs(3600)))
        .expect("test CA");
    let id = SpiffeId::parse("spiffe://weft.local/ns/shop/sa/web").expect("SPIFFE ID");
    let (chain, key) = testing::issue(&ca, &testing::LeafSpec::for_id(&id));
    Identity::new(
        Credential::from_pem(&chain, &key).expect("credential"),
        TrustBundle::from_pem(&ca.root_pem()).expect("bundle"),
    )
    .expect("identity")
}

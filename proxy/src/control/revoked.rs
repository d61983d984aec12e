//! The mesh's revocation list on the proxy: serials pushed in the snapshot's `revokedSerials` go to the
//! identity's verifiers (new handshakes, both directions, refuse them at once), and open peer connections
//! whose peer now holds a revoked certificate are closed (see `PeerPool::revocations`).

use crate::state::Proxy;
use crate::traffic::mesh::MeshView;
use weft_certs::RevokedSerials;

/// Adopts the view's revocation list, if it carries one.
pub fn adopt(proxy: &Proxy, view: &MeshView) {
    let Some(serials) = &view.revoked_serials else {
        return;
    };
    if proxy.identity.set_revoked(RevokedSerials::new(serials)) {
        tracing::info!(
            revoked = serials.len(),
            "revocation list updated; closing connections of revoked peers"
        );
        proxy.peers.revocations_changed();
    }
}

//! Changes made through other replicas: the backend announces which collection changed, and this
//! replica reads it again and hands it on (resources to the push, the deny list to its verifier and
//! proxies) the way its own changes are. With the state directory nothing is ever announced.

use crate::backend::Collection;
use crate::server::ControlPlane;
use std::sync::Arc;
use tokio::sync::broadcast::error::RecvError;

/// Follows the backend's announcements until shutdown.
pub async fn run(cp: Arc<ControlPlane>) {
    let mut changes = cp.backend.subscribe();
    loop {
        let changed = tokio::select! {
            _ = cp.shutdown.cancelled() => return,
            c = changes.recv() => c,
        };
        let collections = match changed {
            Ok(c) => vec![c],
            // Announcements were missed: read everything again.
            Err(RecvError::Lagged(_)) => Collection::ALL.to_vec(),
            Err(RecvError::Closed) => return,
        };
        // Reading blocks on the store (bounded by its call timeout): off the async workers.
        let cp2 = cp.clone();
        let _ = tokio::task::spawn_blocking(move || {
            for c in collections {
                reload(&cp2, c);
            }
        })
        .await;
    }
}

fn reload(cp: &ControlPlane, collection: Collection) {
    let result = match collection {
        Collection::Resources => {
            // The store's guard ends with this statement: publishing takes it again.
            let loaded = cp.store().load();
            loaded.map_err(|e| e.to_string()).map(|changed| {
                if changed {
                    let revision = cp.store().revision();
                    tracing::info!(revision, "resources changed through another replica");
                    cp.publish();
                }
            })
        }
        Collection::Tokens => cp.issuer.tokens().load().map_err(|e| e.to_string()),
        Collection::Claims => cp.issuer.claims().reload().map_err(|e| e.to_string()),
        Collection::Revocations => {
            let r = cp.issuer.revocations().reload().map_err(|e| e.to_string());
            cp.apply_revocations();
            r
        }
        Collection::Vips => {
            cp.hub.reload_vips();
            Ok(())
        }
        // The registry's keys are followed by the hub itself (one key per workload).
        Collection::Registry => Ok(()),
    };
    if let Err(e) = result {
        tracing::warn!(collection = collection.name(), error = %e, "cannot read what another replica changed; keeping what is held");
    }
}

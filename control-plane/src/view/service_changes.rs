//! Services as changes: each service encoded and digested on its own, so a proxy that takes changes
//! (protocol 2) is sent only the services that differ from what it may hold, not every service with
//! every endpoint again. One registration in a mesh of thousands of endpoints then costs each proxy a
//! few hundred bytes instead of the whole list.

use super::frame::digest;
use bytes::{BufMut, Bytes, BytesMut};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use weft_api::control::{ServiceRef, ServiceView};

/// What precedes the whole list in a frame.
const WHOLE_KEY: &str = ",\"services\":";

/// `(namespace, name)`.
type ServiceKey = (String, String);

/// The digest of a whole services section and of each service in it.
#[derive(Debug, Default)]
pub struct ServiceDigests {
    pub(super) whole: u64,
    each: BTreeMap<ServiceKey, u64>,
}

struct ServicePiece {
    key: ServiceKey,
    /// `,` and the service's JSON: after another service as it is, first in a list without the comma
    /// (a slice, not a copy), so a frame's pieces are whole services shared by every proxy.
    after_comma: Bytes,
    digest: u64,
}

impl ServicePiece {
    fn json(&self) -> Bytes {
        self.after_comma.slice(1..)
    }
}

/// One cycle's services, each encoded once.
pub(super) struct ServiceSections {
    pieces: Vec<ServicePiece>,
    digests: Arc<ServiceDigests>,
}

impl ServiceSections {
    /// `views` in the order of the whole list (namespace, then name).
    pub(super) fn encode(views: &[ServiceView]) -> ServiceSections {
        let pieces: Vec<ServicePiece> = views
            .iter()
            .map(|v| {
                let mut after_comma = vec![b','];
                serde_json::to_writer(&mut after_comma, v).expect("views always serialize");
                ServicePiece {
                    key: (v.namespace.clone(), v.name.clone()),
                    digest: digest(&after_comma[1..]),
                    after_comma: Bytes::from(after_comma),
                }
            })
            .collect();
        let each = pieces.iter().map(|p| (p.key.clone(), p.digest)).collect();
        let mut sections = ServiceSections {
            pieces,
            digests: Arc::new(ServiceDigests { whole: 0, each }),
        };
        let whole = digest(&sections.whole_list());
        if let Some(d) = Arc::get_mut(&mut sections.digests) {
            d.whole = whole;
        }
        sections
    }

    /// The whole list, byte for byte what encoding the views as one array gives.
    pub(super) fn whole_list(&self) -> Bytes {
        let mut out = BytesMut::with_capacity(self.whole_len());
        out.put_u8(b'[');
        for (i, p) in self.pieces.iter().enumerate() {
            out.put_slice(if i == 0 {
                &p.after_comma[1..]
            } else {
                &p.after_comma
            });
        }
        out.put_u8(b']');
        out.freeze()
    }

    pub(super) fn digests(&self) -> Arc<ServiceDigests> {
        self.digests.clone()
    }

    /// The whole list's length: every service, the commas between them, the brackets.
    fn whole_len(&self) -> usize {
        let with_commas = self
            .pieces
            .iter()
            .map(|p| p.after_comma.len())
            .sum::<usize>();
        with_commas.saturating_sub(1) + 2
    }
}

/// The change pieces of one cycle by what the proxies may hold: proxies at the same place share them.
/// The pieces are each service's shared JSON, not copies: a frame goes out as one body chunk made of
/// them (`crate::rope`), however many there are.
#[derive(Default)]
pub struct ChangeCache {
    by_held: HashMap<Vec<u64>, Option<Arc<[Bytes]>>>,
}

impl ChangeCache {
    /// The frame pieces (`,"servicesChanged":[...]`, `,"servicesRemoved":[...]`) that bring any view
    /// in `held` to `target`; `None` when the whole list is no larger.
    pub(super) fn pieces(
        &mut self,
        target: &ServiceSections,
        held: &[&ServiceDigests],
    ) -> Option<Arc<[Bytes]>> {
        // The changes cover the union of the views: their order and repeats do not matter.
        let mut key: Vec<u64> = held.iter().map(|d| d.whole).collect();
        key.sort_unstable();
        key.dedup();
        self.by_held
            .entry(key)
            .or_insert_with(|| changes(target, held).map(Arc::from))
            .clone()
    }
}

fn changes(target: &ServiceSections, held: &[&ServiceDigests]) -> Option<Vec<Bytes>> {
    let changed: Vec<&ServicePiece> = target
        .pieces
        .iter()
        .filter(|p| held.iter().any(|h| h.each.get(&p.key) != Some(&p.digest)))
        .collect();
    let removed: BTreeSet<&ServiceKey> = held
        .iter()
        .flat_map(|h| h.each.keys())
        .filter(|k| !target.digests.each.contains_key(*k))
        .collect();
    let mut pieces = Vec::with_capacity(changed.len() * 2 + 2);
    for (i, p) in changed.iter().enumerate() {
        if i == 0 {
            pieces.push(Bytes::from_static(b",\"servicesChanged\":["));
            pieces.push(p.json());
        } else {
            pieces.push(p.after_comma.clone());
        }
    }
    if !changed.is_empty() {
        pieces.push(Bytes::from_static(b"]"));
    }
    if !removed.is_empty() {
        let refs: Vec<ServiceRef> = removed
            .into_iter()
            .map(|(namespace, name)| ServiceRef {
                namespace: namespace.clone(),
                name: name.clone(),
            })
            .collect();
        let json = serde_json::to_vec(&refs).expect("names always serialize");
        pieces.push(Bytes::from_static(b",\"servicesRemoved\":"));
        pieces.push(Bytes::from(json));
    }
    let len: usize = pieces.iter().map(|p| p.len()).sum();
    (len < WHOLE_KEY.len() + target.whole_len()).then_some(pieces)
}

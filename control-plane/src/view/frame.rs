//! Snapshot frames: a push cycle's sections, encoded once, and each proxy's frame assembled from them
//! by reference, carrying only what may differ from what the proxy holds.

use super::service_changes::{ChangeCache, ServiceDigests, ServiceSections};
use super::{services_view, MeshResources};
use crate::hub::Registered;
use crate::vips::Vips;
use bytes::{BufMut, Bytes, BytesMut};
use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use weft_certs::TrustDomain;

/// Digests of every section of one proxy's view, and of each of its services.
#[derive(Debug, Clone)]
pub struct SectionDigests {
    mesh: u64,
    routes: u64,
    policies: u64,
    bundle: u64,
    revoked: u64,
    /// The services section's digest and each service's, shared by every proxy of a cycle.
    services: Arc<ServiceDigests>,
}

impl SectionDigests {
    fn sums(&self) -> [u64; 6] {
        let (m, s, r) = (self.mesh, self.services.whole, self.routes);
        [m, s, r, self.policies, self.bundle, self.revoked]
    }
}

/// Equal views: every section's digest is (a service's own digests follow from the section's).
impl PartialEq for SectionDigests {
    fn eq(&self, other: &Self) -> bool {
        self.sums() == other.sums()
    }
}

impl Eq for SectionDigests {}

pub(super) struct Section {
    json: Bytes,
    digest: u64,
}

impl Section {
    pub(super) fn encode<T: serde::Serialize>(value: &T) -> Section {
        Section::from_json(Bytes::from(
            serde_json::to_vec(value).expect("views always serialize"),
        ))
    }

    pub(super) fn from_json(json: Bytes) -> Section {
        Section {
            digest: digest(&json),
            json,
        }
    }
}

pub(super) fn digest(json: &[u8]) -> u64 {
    let mut h = DefaultHasher::new();
    json.hash(&mut h);
    h.finish()
}

/// The policies for one kind of workload, encoded.
pub struct WorkloadPolicies(pub(super) Section);

pub struct SharedSections {
    mesh: Section,
    services: Section,
    each_service: ServiceSections,
    routes: Section,
    bundle: Section,
    revoked: Section,
}

impl SharedSections {
    pub fn build(
        res: &MeshResources,
        registered: &[&Registered],
        td: &TrustDomain,
        bundle_pem: &str,
        vips: &Vips,
        revoked: &[String],
    ) -> SharedSections {
        let each_service = ServiceSections::encode(&services_view(res, registered, td, vips));
        SharedSections {
            revoked: Section::encode(&revoked),
            mesh: Section::encode(&res.mesh),
            services: Section::from_json(each_service.whole_list()),
            each_service,
            routes: Section::encode(&res.routes),
            bundle: Section::encode(&bundle_pem),
        }
    }

    pub fn digests(&self, policies: &WorkloadPolicies) -> SectionDigests {
        SectionDigests {
            mesh: self.mesh.digest,
            services: self.each_service.digests(),
            routes: self.routes.digest,
            policies: policies.0.digest,
            bundle: self.bundle.digest,
            revoked: self.revoked.digest,
        }
    }

    /// A snapshot frame, as pieces to write in order (the shared sections are referenced, not copied).
    /// It carries each section that differs in any view in `may_hold` (all of them when that is empty:
    /// what the proxy holds is unknown). With `changes` (a proxy that takes them), services go as the
    /// ones that changed and the ones removed, when that is smaller than the whole list.
    pub fn frame(
        &self,
        version: u64,
        policies: &WorkloadPolicies,
        may_hold: &[&SectionDigests],
        changes: Option<&mut ChangeCache>,
    ) -> Frame {
        let mine = self.digests(policies).sums();
        let differs =
            |i: usize| may_hold.is_empty() || may_hold.iter().any(|d| d.sums()[i] != mine[i]);
        let mut pieces = vec![Bytes::from(format!(
            "{{\"type\":\"snapshot\",\"version\":{version}"
        ))];
        if differs(0) {
            push_section(&mut pieces, "mesh", &self.mesh);
        }
        let service_changes = match (differs(1), changes) {
            (true, Some(cache)) if !may_hold.is_empty() => {
                let held: Vec<&ServiceDigests> = may_hold.iter().map(|d| &*d.services).collect();
                cache.pieces(&self.each_service, &held)
            }
            _ => None,
        };
        match service_changes {
            Some(changed) => pieces.extend(changed.iter().cloned()),
            None if differs(1) => push_section(&mut pieces, "services", &self.services),
            None => {}
        }
        let rest: [(&str, &Section); 4] = [
            ("routes", &self.routes),
            ("policies", &policies.0),
            ("trustBundlePem", &self.bundle),
            ("revokedSerials", &self.revoked),
        ];
        for (i, (name, section)) in rest.into_iter().enumerate() {
            if differs(i + 2) {
                push_section(&mut pieces, name, section);
            }
        }
        pieces.push(Bytes::from_static(b"}"));
        Frame::with_length(pieces)
    }
}

fn push_section(pieces: &mut Vec<Bytes>, name: &str, section: &Section) {
    pieces.push(Bytes::from(format!(",\"{name}\":")));
    pieces.push(section.json.clone());
}

/// Pieces at least this large are written from their shared copy; smaller ones are copied together.
const SHARED_FROM: usize = 512;

/// One length-prefixed frame in pieces; concatenated they are exactly what `weft_api::control::encode`
/// would produce.
#[derive(Debug, Clone)]
pub struct Frame(pub Vec<Bytes>);

impl Frame {
    fn with_length(mut pieces: Vec<Bytes>) -> Frame {
        let len: usize = pieces.iter().map(|p| p.len()).sum();
        let mut prefix = BytesMut::with_capacity(4);
        prefix.put_u32(len as u32);
        pieces.insert(0, prefix.freeze());
        Frame(pieces)
    }

    /// The frame as chunks to write: pieces of at least [`SHARED_FROM`] bytes as they are (the shared
    /// sections, not copied per proxy), the small ones between them copied together: written as
    /// slices, a length prefix or a field name alone could become a TLS record of its own.
    pub fn into_chunks(self) -> Vec<Bytes> {
        let mut chunks = Vec::new();
        let mut small = BytesMut::new();
        for piece in self.0 {
            if piece.len() < SHARED_FROM {
                small.put_slice(&piece);
                if small.len() < SHARED_FROM {
                    continue;
                }
            }
            if !small.is_empty() {
                chunks.push(small.split().freeze());
            }
            if piece.len() >= SHARED_FROM {
                chunks.push(piece);
            }
        }
        if !small.is_empty() {
            chunks.push(small.freeze());
        }
        chunks
    }

    pub fn to_bytes(&self) -> Bytes {
        let mut out = BytesMut::with_capacity(self.0.iter().map(|p| p.len()).sum());
        for p in &self.0 {
            out.put_slice(p);
        }
        out.freeze()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_pieces_go_together_and_large_ones_from_their_shared_copy() {
        let shared = Bytes::from(vec![b'x'; SHARED_FROM + 10]);
        let pieces = ["abcd", "{\"type\":\"snapshot\"", ",\"services\":"]
            .map(|p| Bytes::from_static(p.as_bytes()));
        let mut frame: Vec<Bytes> = pieces.to_vec();
        frame.extend([
            shared.clone(),
            Bytes::from_static(b","),
            Bytes::from_static(b"}"),
        ]);
        let whole = Frame(frame.clone()).to_bytes();
        let chunks = Frame(frame).into_chunks();
        assert_eq!(chunks.len(), 3);
        assert_eq!(&chunks[0][..], b"abcd{\"type\":\"snapshot\",\"services\":");
        assert_eq!(
            chunks[1].as_ptr(),
            shared.as_ptr(),
            "the shared section was copied"
        );
        assert_eq!(&chunks[2][..], b",}");
        assert_eq!(chunks.concat(), whole.to_vec());
        // Many small pieces are cut where they reach the size of a shared one.
        let many = vec![Bytes::from(vec![b'y'; 100]); 10];
        let chunks = Frame(many).into_chunks();
        let sizes: Vec<usize> = chunks.iter().map(|c| c.len()).collect();
        assert_eq!(sizes, [600, 400]);
    }
}

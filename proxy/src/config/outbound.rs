//! Explicit outbound listeners (`outbound:`): a local address the app connects to, and where it leads.

use super::Invalid;
use serde::{de, Deserialize, Deserializer, Serialize};
use std::collections::HashSet;
use weft_api::{OutboundListener, Target};

/// Outbound listeners; duplicate listen addresses are refused while parsing, so the error carries the
/// line of the second one.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(transparent)]
pub struct OutboundList(pub Vec<OutboundListener>);

impl<'de> Deserialize<'de> for OutboundList {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> de::Visitor<'de> for V {
            type Value = OutboundList;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a list of outbound listeners")
            }
            fn visit_seq<A: de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<OutboundList, A::Error> {
                let mut seen = HashSet::new();
                let mut out = Vec::new();
                while let Some(l) = seq.next_element::<OutboundListener>()? {
                    if !seen.insert(l.listen) {
                        return Err(de::Error::custom(format!(
                            "listen address {} is used by an earlier listener",
                            l.listen
                        )));
                    }
                    out.push(l);
                }
                Ok(OutboundList(out))
            }
        }
        d.deserialize_seq(V)
    }
}

impl OutboundList {
    /// Every listener leads somewhere it can reach: a fixed peer with an app port, or a service, which
    /// only a control plane can resolve.
    pub(super) fn check(&self, has_control: bool) -> Result<(), Invalid> {
        for (i, l) in self.0.iter().enumerate() {
            match l.target() {
                Err(reason) => return Err(Invalid::new(format!("outbound[{i}]"), reason)),
                Ok(Target::Fixed(up)) if up.target_port == 0 => {
                    return Err(Invalid::new(
                        format!("outbound[{i}].target_port"),
                        "must be 1-65535",
                    ))
                }
                Ok(Target::Service { .. }) if !has_control => {
                    return Err(Invalid::new(
                        format!("outbound[{i}].service"),
                        "a service listener needs `control` (its endpoints come from the control plane)",
                    ))
                }
                Ok(_) => {}
            }
        }
        Ok(())
    }
}

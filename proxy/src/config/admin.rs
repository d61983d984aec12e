//! The admin endpoint (`admin:`), written as an address or as a section.

use super::Invalid;
use serde::{de, Deserialize, Deserializer, Serialize};
use std::net::SocketAddr;

/// The admin endpoint (`admin:`). The old form, a bare address, still reads: `admin: 127.0.0.1:15000`.
#[derive(Debug, Clone, Serialize)]
pub struct AdminConfig {
    /// Loopback only. Default `127.0.0.1:15000`.
    pub listen: SocketAddr,
    /// Serve `POST /shutdown`. Off by default: every process in the pod reaches the admin port, and the
    /// app must not be able to stop its own sidecar (signals stop the proxy).
    pub shutdown: bool,
}

impl<'de> Deserialize<'de> for AdminConfig {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Full {
            #[serde(default = "default_admin_listen")]
            listen: SocketAddr,
            #[serde(default)]
            shutdown: bool,
        }
        struct V;
        impl<'de> de::Visitor<'de> for V {
            type Value = AdminConfig;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an address (`127.0.0.1:15000`) or `{listen, shutdown}`")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<AdminConfig, E> {
                let listen = v.parse().map_err(|_| {
                    E::custom(format!("`{v}` is not an address such as 127.0.0.1:15000"))
                })?;
                Ok(AdminConfig {
                    listen,
                    shutdown: false,
                })
            }
            fn visit_map<A: de::MapAccess<'de>>(self, m: A) -> Result<AdminConfig, A::Error> {
                let f = Full::deserialize(de::value::MapAccessDeserializer::new(m))?;
                Ok(AdminConfig {
                    listen: f.listen,
                    shutdown: f.shutdown,
                })
            }
        }
        d.deserialize_any(V)
    }
}

impl AdminConfig {
    /// Loopback only: `/config` shows the proxy's whole config.
    pub(super) fn check(&self) -> Result<(), Invalid> {
        if self.listen.ip().is_loopback() {
            return Ok(());
        }
        Err(Invalid::new(
            "admin",
            format!(
                "{} is not a loopback address; the admin endpoint shows the proxy's config",
                self.listen
            ),
        ))
    }
}

fn default_admin_listen() -> SocketAddr {
    default_admin().listen
}

pub(super) fn default_admin() -> AdminConfig {
    AdminConfig {
        listen: SocketAddr::from(([127, 0, 0, 1], 15000)),
        shutdown: false,
    }
}

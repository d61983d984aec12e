//! A service's name: its namespace and name, formatted in one place.

use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceName {
    pub namespace: String,
    pub name: String,
}

impl ServiceName {
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> ServiceName {
        ServiceName {
            namespace: namespace.into(),
            name: name.into(),
        }
    }

    /// The authority a request names the service by when it names none itself: `name.namespace.svc:port`.
    pub fn authority(&self, port: u16) -> String {
        format!("{}.{}.svc:{port}", self.name, self.namespace)
    }
}

/// `namespace/name`: in logs, metric labels and errors.
impl fmt::Display for ServiceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

//! The words telemetry uses: every label value of the request path's metrics, every rejection reason
//! and every access-log flag is a variant here, spelled once in `as_str()`, so a typo cannot make a
//! new time series and a reader can see the whole vocabulary in one place.

use prometheus_client::encoding::{EncodeLabelValue, LabelValueEncoder};
use std::fmt::Write as _;

/// An enum of label values: `as_str()`, Prometheus encoding and JSON (access log) from one table.
macro_rules! words {
    ($(#[$m:meta])* $name:ident { $($(#[$vm:meta])* $v:ident => $s:literal,)* }) => {
        $(#[$m])*
        #[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
        pub enum $name { $($(#[$vm])* $v,)* }

        impl $name {
            pub fn as_str(self) -> &'static str {
                match self { $($name::$v => $s,)* }
            }
        }

        impl EncodeLabelValue for $name {
            fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
                encoder.write_str(self.as_str())
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

words! {
    /// Which side of a hop: `outbound` is the caller's proxy (the app's connections going out),
    /// `inbound` the destination's proxy (peers' and outside clients' connections coming in).
    Direction {
        Outbound => "outbound",
        Inbound => "inbound",
    }
}

words! {
    /// The listener a rejection happened on (the `listener` label of `weft_proxy_rejections_total`).
    Listener {
        /// The app's connections: explicit outbound listeners and the intercepted 15001.
        Outbound => "outbound",
        /// Peers' mTLS connections (15008).
        Tunnel => "tunnel",
        /// Redirected plaintext from outside the mesh (15006).
        Inbound => "inbound",
        Admin => "admin",
        Health => "health",
        Dns => "dns",
    }
}

words! {
    /// What a connection carries (the `protocol` label of the connection metrics).
    ConnProtocol {
        Http1 => "http1",
        Http2 => "http2",
        /// The app's own TLS, carried opaque.
        Tls => "tls",
        Tcp => "tcp",
        /// To a destination outside the mesh, connected directly.
        Passthrough => "passthrough",
        /// From outside the mesh (PERMISSIVE).
        Plaintext => "plaintext",
        /// A peer's mTLS HTTP/2 connection.
        Tunnel => "tunnel",
    }
}

words! {
    /// Why the proxy refused or answered something itself: the `reason` label of rejections, the
    /// `weft-proxy-error` header of its answers, and an access-log flag.
    Reason {
        AcceptError => "accept_error",
        MaxConnections => "max_connections",
        NoOriginalDst => "no_original_dst",
        Loop => "loop",
        PassthroughConnect => "passthrough_connect",
        RegistryOnly => "registry_only",
        BadRequest => "bad_request",
        HeaderTooLarge => "header_too_large",
        Timeout => "timeout",
        ProtocolError => "protocol_error",
        Alpn => "alpn",
        NoConfig => "no_config",
        NoPeerIdentity => "no_peer_identity",
        Revoked => "revoked",
        TlsHandshake => "tls_handshake",
        TlsHandshakeTimeout => "tls_handshake_timeout",
        StrictMtls => "strict_mtls",
        WriteDisabled => "write_disabled",
        ProxyPort => "proxy_port",
        PortNotAllowed => "port_not_allowed",
        PeerConnectTimeout => "peer_connect_timeout",
        PeerConnect => "peer_connect",
        PeerTls => "peer_tls",
        /// This proxy's own certificate expired (and could not be renewed): it refuses mTLS to peers.
        CertExpired => "cert_expired",
        PeerHandshake => "peer_handshake",
        PeerRequest => "peer_request",
        PeerRefused => "peer_refused",
        AppConnect => "app_connect",
        AppConnectTimeout => "app_connect_timeout",
        AppRequest => "app_request",
        BadTunnelRequest => "bad_tunnel_request",
        NoEndpoint => "no_endpoint",
        RequestTimeout => "request_timeout",
        PerTryTimeout => "per_try_timeout",
        Overflow => "overflow",
        BadPath => "bad_path",
        Denied => "denied",
        RateLimited => "rate_limited",
        ConnectNotCarried => "connect_not_carried",
        // The DNS responder's.
        IdleTimeout => "idle_timeout",
        Malformed => "malformed",
        NotAQuery => "not_a_query",
        ReplyTooLarge => "reply_too_large",
        TooLarge => "too_large",
        Truncated => "truncated",
        EncodeError => "encode_error",
        MaxForwards => "max_forwards",
        ReceiveError => "receive_error",
    }
}

words! {
    /// What became of a retry the policy allowed (the `result` label of `weft_proxy_retries_total`).
    RetryResult {
        Sent => "sent",
        BudgetExhausted => "budget_exhausted",
        AttemptsExhausted => "attempts_exhausted",
        NotRetryable => "not_retryable",
    }
}

words! {
    /// A policy that refused (`enforce`) or would have refused (`audit`).
    AuthzMode {
        Enforce => "enforce",
        Audit => "audit",
    }
}

words! {
    /// What an access-log line is about.
    LogProtocol {
        Http => "http",
        Tcp => "tcp",
    }
}

words! {
    /// Why a request or stream is worth a look in the access log (lines with a flag are always
    /// written, whatever the sample rate), besides a [`Reason`] the proxy answered with.
    Flag {
        Fallback => "fallback",
        RetryBudgetExhausted => "retry_budget_exhausted",
        BodyNotRetried => "body_not_retried",
        DownstreamClosed => "downstream_closed",
        ResponseBodyError => "response_body_error",
        ConnectionError => "connection_error",
    }
}

/// An access-log flag: something that happened, or the reason the proxy answered itself.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum LogFlag {
    Flag(Flag),
    Reason(Reason),
}

impl serde::Serialize for LogFlag {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            LogFlag::Flag(f) => f.serialize(s),
            LogFlag::Reason(r) => r.serialize(s),
        }
    }
}

impl From<Flag> for LogFlag {
    fn from(f: Flag) -> LogFlag {
        LogFlag::Flag(f)
    }
}

impl From<Reason> for LogFlag {
    fn from(r: Reason) -> LogFlag {
        LogFlag::Reason(r)
    }
}

words! {
    /// The method label: the common methods by name, the rest as `other` (bounded cardinality).
    MethodClass {
        Get => "GET",
        Head => "HEAD",
        Post => "POST",
        Put => "PUT",
        Delete => "DELETE",
        Patch => "PATCH",
        Options => "OPTIONS",
        Connect => "CONNECT",
        Other => "other",
    }
}

impl MethodClass {
    pub fn of(m: &http::Method) -> MethodClass {
        match *m {
            http::Method::GET => MethodClass::Get,
            http::Method::HEAD => MethodClass::Head,
            http::Method::POST => MethodClass::Post,
            http::Method::PUT => MethodClass::Put,
            http::Method::DELETE => MethodClass::Delete,
            http::Method::PATCH => MethodClass::Patch,
            http::Method::OPTIONS => MethodClass::Options,
            http::Method::CONNECT => MethodClass::Connect,
            _ => MethodClass::Other,
        }
    }
}

words! {
    /// Which way bytes of an opaque stream went: `sent` towards the far side, `received` from it.
    Flow {
        Sent => "sent",
        Received => "received",
    }
}

words! {
    /// Why a TLS handshake on the peer hop failed, read from the error rustls reports.
    TlsFailure {
        Revoked => "revoked",
        NoClientCertificate => "no_client_certificate",
        IdentityMismatch => "identity_mismatch",
        Expired => "expired",
        NotYetValid => "not_yet_valid",
        UnknownIssuer => "unknown_issuer",
        NotTls => "not_tls",
        Closed => "closed",
        Other => "other",
    }
}

impl TlsFailure {
    pub fn of(err: &std::io::Error) -> TlsFailure {
        let text = err.to_string();
        let has = |s: &str| text.contains(s);
        if has("revoked") {
            TlsFailure::Revoked
        } else if has("peer sent no certificates") || has("CertificateRequired") {
            TlsFailure::NoClientCertificate
        } else if has("expected spiffe://") || has("identity") {
            TlsFailure::IdentityMismatch
        } else if has("Expired") || has("expired") {
            TlsFailure::Expired
        } else if has("NotValidYet") || has("not yet valid") {
            TlsFailure::NotYetValid
        } else if has("UnknownIssuer") || has("unknown issuer") || has("UnknownCA") {
            TlsFailure::UnknownIssuer
        } else if has("InvalidContentType") || has("corrupt message") || has("InvalidMessage") {
            TlsFailure::NotTls
        } else if has("eof") || has("EOF") || has("reset") {
            TlsFailure::Closed
        } else {
            TlsFailure::Other
        }
    }
}

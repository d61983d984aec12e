//! The responder's own metric, `weft_proxy_dns_queries_total{result}`. What it refuses is counted with
//! the proxy's other refusals, in `weft_proxy_rejections_total{listener="dns"}`.

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

/// What a question got.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum QueryResult {
    /// A mesh name, answered with its address.
    Answered,
    /// A mesh name with no record of the asked type.
    NoData,
    NxDomain,
    /// Relayed to an upstream, which answered.
    Forwarded,
    /// No upstream answered, or none could be asked: SERVFAIL.
    ForwardFailed,
    FormErr,
    NotImp,
    Refused,
}

impl QueryResult {
    pub const ALL: [QueryResult; 8] = [
        QueryResult::Answered,
        QueryResult::NoData,
        QueryResult::NxDomain,
        QueryResult::Forwarded,
        QueryResult::ForwardFailed,
        QueryResult::FormErr,
        QueryResult::NotImp,
        QueryResult::Refused,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            QueryResult::Answered => "answered",
            QueryResult::NoData => "nodata",
            QueryResult::NxDomain => "nxdomain",
            QueryResult::Forwarded => "forwarded",
            QueryResult::ForwardFailed => "forward_failed",
            QueryResult::FormErr => "formerr",
            QueryResult::NotImp => "notimp",
            QueryResult::Refused => "refused",
        }
    }
}

impl EncodeLabelValue for QueryResult {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        EncodeLabelValue::encode(&self.as_str(), encoder)
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct QueryLabels {
    result: QueryResult,
}

#[derive(Clone, Default)]
pub struct Metrics {
    queries: Family<QueryLabels, Counter>,
}

impl Metrics {
    pub fn new(registry: &mut Registry) -> Metrics {
        let m = Metrics::default();
        registry.register(
            "dns_queries",
            "Questions the DNS responder answered, by result (answered, nodata, nxdomain, forwarded, \
             forward_failed, formerr, notimp, refused)",
            m.queries.clone(),
        );
        m
    }

    pub fn query(&self, result: QueryResult) {
        self.queries.get_or_create(&QueryLabels { result }).inc();
    }
}

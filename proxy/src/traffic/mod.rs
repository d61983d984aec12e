//! Traffic decisions: the mesh view the control plane pushed, routes and their rules, the per-destination
//! state (bulkheads, retry budgets), load balancing, retries, rate limits and authorization.

pub mod authz;
pub mod balance;
pub mod destination;
pub mod dispatch;
pub mod mesh;
pub mod plan;
pub mod ratelimit;
pub mod retry;
pub mod route;
pub mod service_name;

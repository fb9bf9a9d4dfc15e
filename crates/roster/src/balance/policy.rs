/// How a [`Balancer`](super::Balancer) chooses among endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub enum Policy {
    /// Each endpoint in turn.
    RoundRobin,
    /// nginx's smooth weighted round robin: exact proportions per cycle,
    /// interleaved rather than bursty.
    WeightedRoundRobin,
    Random,
    /// Power of two choices: of two random endpoints, one whose latency
    /// average is over [`SLOW_FACTOR`](super::SLOW_FACTOR) times the
    /// other's (and 1 ms more) loses; otherwise the lower in-flight count
    /// times latency average wins. Averages decay without samples (see
    /// [`HealthConfig::latency_half_life`](super::HealthConfig)), so a
    /// demoted endpoint is measured again within seconds.
    #[default]
    LeastRequest,
    /// A ring with virtual nodes; the key comes from the request. When one
    /// of N endpoints leaves, about 1/N of the keys move.
    ConsistentHash,
}

impl std::str::FromStr for Policy {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "round-robin" | "rr" => Policy::RoundRobin,
            "weighted" | "weighted-round-robin" | "wrr" => Policy::WeightedRoundRobin,
            "random" => Policy::Random,
            "least-request" | "p2c" => Policy::LeastRequest,
            "consistent-hash" | "hash" => Policy::ConsistentHash,
            other => {
                return Err(format!(
                    "unknown policy {other:?}; use round-robin, weighted, random, least-request or consistent-hash"
                ));
            }
        })
    }
}

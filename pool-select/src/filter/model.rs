//! Model filter: a pool whose `model` is `Some(m)` serves only requests for `m` or for no
//! model; a pool with no model serves any. Exact string match, no aliases.

use crate::pool::{PoolView, RequestFeatures};

pub const NAME: &str = "model";

/// Why `view` cannot serve this request's model, if it cannot.
pub fn rejects(features: &RequestFeatures, view: &PoolView<'_>) -> Option<&'static str> {
    (!view.facts.serves(features.model.as_deref())).then_some("serves another model")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::{features, Pools};

    #[test]
    fn a_pool_with_a_model_serves_only_that_model_or_requests_without_one() {
        let pools = Pools::new(&["a"]).model(0, "m");
        let v = pools.views(&[None])[0];
        assert_eq!(rejects(&features(Some("m")), &v), None);
        assert_eq!(rejects(&features(None), &v), None);
        assert_eq!(rejects(&features(Some("n")), &v), Some("serves another model"));
    }

    #[test]
    fn a_pool_without_a_model_serves_any() {
        let pools = Pools::new(&["a"]);
        assert_eq!(rejects(&features(Some("anything")), &pools.views(&[None])[0]), None);
    }
}

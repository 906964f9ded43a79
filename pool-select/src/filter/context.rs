//! Context filter: a pool whose engines cannot take a prompt this long (`max_input_tokens`, its
//! context window) is removed, so a long prompt goes to a pool that can serve it instead of
//! being refused there. The prompt's length is the request's `isl_tokens` when the caller
//! counted it, else what the probes report (`request_blocks` × the routers' block size). An
//! unknown length, or a pool without the limit, removes nothing; if no eligible pool can take
//! the prompt, none is removed (the engine's own refusal says why better than "no pool").

use crate::pool::PoolView;

pub const NAME: &str = "context";

/// Why `view` cannot take a prompt of `input_tokens`, if it cannot.
pub fn rejects(input_tokens: Option<u64>, view: &PoolView<'_>) -> Option<&'static str> {
    let (tokens, max) = (input_tokens?, view.facts.max_input_tokens?);
    (tokens > max).then_some("prompt longer than max_input_tokens")
}

/// The pools among `eligible` that can take the prompt, or all of them when none can.
pub(crate) fn survivors(input_tokens: Option<u64>, views: &[PoolView<'_>], eligible: &[usize]) -> Vec<usize> {
    let fit: Vec<usize> = eligible.iter().copied().filter(|&i| rejects(input_tokens, &views[i]).is_none()).collect();
    if fit.is_empty() {
        eligible.to_vec()
    } else {
        fit
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::Pools;

    #[test]
    fn a_prompt_over_the_limit_is_rejected_at_the_limit_and_unknown_it_is_not() {
        let pools = Pools::new(&["small", "any"]).max_input(0, 1000);
        let views = pools.views(&[None, None]);
        assert_eq!(rejects(Some(1001), &views[0]), Some("prompt longer than max_input_tokens"));
        assert_eq!(rejects(Some(1000), &views[0]), None);
        assert_eq!(rejects(None, &views[0]), None);
        assert_eq!(rejects(Some(u64::MAX), &views[1]), None, "no limit set");
        assert_eq!(survivors(Some(5000), &views, &[0, 1]), vec![1]);
    }

    #[test]
    fn when_no_pool_can_take_the_prompt_none_is_removed() {
        let pools = Pools::new(&["a", "b"]).max_input(0, 10).max_input(1, 20);
        assert_eq!(survivors(Some(50), &pools.views(&[None, None]), &[0, 1]), vec![0, 1]);
    }
}

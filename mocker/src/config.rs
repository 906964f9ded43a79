//! Engine settings, with Dynamo's mocker defaults.

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::timing::TimingModel;

/// One engine's (one dp rank's) settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EngineConfig {
    /// KV cache size in blocks.
    pub num_gpu_blocks: usize,
    /// Tokens per KV block.
    pub block_size: usize,
    /// Most sequences running at once.
    pub max_num_seqs: usize,
    /// Most tokens computed in one pass (prefill chunks plus decodes).
    pub max_num_batched_tokens: usize,
    /// Reuse cached blocks across requests (and publish KV events).
    pub enable_prefix_caching: bool,
    /// Split long prompts across passes; without it a prompt longer than the batch budget waits.
    pub enable_chunked_prefill: bool,
    /// Longest prompt + output accepted; `None`: the cache size.
    pub max_model_len: Option<usize>,
    pub timing: TimingModel,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            num_gpu_blocks: 16384,
            block_size: 64,
            max_num_seqs: 256,
            max_num_batched_tokens: 8192,
            enable_prefix_caching: true,
            enable_chunked_prefill: true,
            max_model_len: None,
            timing: TimingModel::default(),
        }
    }
}

/// A setting out of range; names the field.
#[derive(Debug, Error, PartialEq)]
#[error("{field} {problem}")]
pub struct ConfigError {
    pub field: &'static str,
    pub problem: String,
}

impl EngineConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        let positive = |field: &'static str, v: usize| {
            if v == 0 {
                Err(ConfigError { field, problem: "must be > 0".into() })
            } else {
                Ok(())
            }
        };
        positive("num_gpu_blocks", self.num_gpu_blocks)?;
        positive("block_size", self.block_size)?;
        positive("max_num_seqs", self.max_num_seqs)?;
        positive("max_num_batched_tokens", self.max_num_batched_tokens)?;
        if let Some(len) = self.max_model_len {
            positive("max_model_len", len)?;
        }
        for (field, v) in
            [("speedup_ratio", self.timing.speedup_ratio), ("decode_speedup_ratio", self.timing.decode_speedup_ratio)]
        {
            if !(v.is_finite() && v > 0.0) {
                return Err(ConfigError { field, problem: format!("must be a finite number > 0, got {v}") });
            }
        }
        Ok(())
    }

    /// Total KV capacity in tokens.
    pub fn capacity_tokens(&self) -> usize {
        self.num_gpu_blocks * self.block_size
    }

    /// Longest sequence (prompt + output) this engine accepts.
    pub fn max_len(&self) -> usize {
        self.max_model_len.unwrap_or(self.capacity_tokens()).min(self.capacity_tokens())
    }
}

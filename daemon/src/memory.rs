//! Memory before a model load: what the model will take (weights as held for compute, the
//! KV cache at the configured context and dtype, Mimi) against what the device can still
//! allocate. On the CPU and on integrated GPUs (Jetson: CUDA memory is the system RAM) that
//! is `MemAvailable`; on a discrete GPU, the GPU's free memory.

use crate::config::{MimiDevice, ModelConfig};
use crate::model_spec::ModelSpec;
use anyhow::Context;
use moshid_models::device::{free_memory, FreeMemory};

/// Bytes a loaded model holds (and a new one will need).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Footprint {
    /// LM weights as held for compute.
    pub weights: u64,
    /// LM KV cache for the configured context, per conversation.
    pub kv_cache: u64,
    /// Mimi's weights (stored as they are computed with).
    pub mimi: u64,
    /// Mimi's streaming state, per conversation.
    pub mimi_state: u64,
    /// Conversations the model holds at once (the room and the web sessions; 0 counts
    /// as 1).
    pub conversations: usize,
    /// Mimi's weights come from another pool than the LM's (`mimi_device = "cpu"` with the
    /// LM on a discrete GPU): they are not in [`Footprint::total`].
    pub mimi_apart: bool,
    /// What the CUDA runtime takes beside the tensors (an allowance; 0 on the CPU).
    pub runtime: u64,
    /// The pool the bytes come from is the system RAM (CPU, or a Jetson's GPU).
    pub system_ram: bool,
}

impl Footprint {
    /// Total bytes taken from the LM's pool.
    pub fn total(&self) -> u64 {
        let n = self.conversations.max(1) as u64;
        let mimi = if self.mimi_apart {
            0
        } else {
            self.mimi + n * self.mimi_state
        };
        self.weights + n * self.kv_cache + mimi + self.runtime
    }

    /// The same model holding `n` conversations.
    pub fn with_conversations(self, n: usize) -> Footprint {
        Footprint {
            conversations: n,
            ..self
        }
    }
}

impl std::fmt::Display for Footprint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:.2} GB (weights {:.2} GB + KV cache {:.2} GB",
            gb(self.total()),
            gb(self.weights),
            gb(self.kv_cache),
        )?;
        let n = self.conversations.max(1);
        if n > 1 {
            write!(f, " x {n} conversations")?;
        }
        if !self.mimi_apart {
            write!(f, " + Mimi {:.2} GB", gb(self.mimi))?;
            if self.mimi_state > 0 {
                write!(f, " + Mimi state {:.2} GB x {n}", gb(self.mimi_state))?;
            }
        }
        if self.runtime > 0 {
            write!(f, " + CUDA runtime {:.2} GB", gb(self.runtime))?;
        }
        f.write_str(")")?;
        if self.mimi_apart {
            write!(f, ", Mimi {:.2} GB of RAM beside", gb(self.mimi))?;
        }
        Ok(())
    }
}

fn gb(b: u64) -> f64 {
    b as f64 / 1e9
}

/// How a load can go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plan {
    /// Both models fit: the old one keeps talking while the new one loads.
    Alongside,
    /// Only one fits: release the old model first (the conversation pauses).
    ReleaseFirst,
}

/// Reads the file headers and sizes `spec` as `model` configures it, for `conversations`
/// at once.
pub fn footprint(
    spec: &ModelSpec,
    model: &ModelConfig,
    conversations: usize,
) -> anyhow::Result<(Footprint, Option<FreeMemory>)> {
    let device = model.device.open()?;
    let dtype = model.dtype.resolve(&device);
    let est = moshid_models::lm::estimate_memory(&spec.lm, &spec.lm_config, dtype, model.context)
        .with_context(|| format!("cannot load the LM from {}", spec.lm.display()))?;
    let mimi = std::fs::metadata(&spec.mimi).map(|m| m.len()).unwrap_or(0);
    let free = free_memory(&device);
    let system_ram = free.is_none_or(|f| f.system_ram);
    Ok((
        Footprint {
            weights: est.weights_bytes,
            kv_cache: est.kv_cache_bytes,
            mimi,
            mimi_state: mimi_stream_bytes(&spec.mimi_config),
            conversations,
            mimi_apart: mimi_apart(model.mimi_device, system_ram),
            runtime: if device.is_cpu() {
                0
            } else {
                moshid_models::lm::CUDA_RUNTIME_BYTES
            },
            system_ram,
        },
        free,
    ))
}

/// A conversation's Mimi stream (the weights are shared): the encoder's and decoder's
/// attention caches at full context, in f32, and as much again for the convolutions' state
/// and the working buffers (a measured 24.8 MB for the released Mimi, 16.5 MB of it the
/// caches; `Mimi::stream_state_bytes` measures it once loaded).
fn mimi_stream_bytes(c: &moshid_models::mimi::MimiConfig) -> u64 {
    let t = &c.transformer;
    let caches = 2 * t.num_layers * 2 * t.context * t.d_model * 4;
    (caches as u64) * 3 / 2
}

/// Whether Mimi's weights come from another pool than the LM's: only when Mimi runs on the
/// CPU and the LM's pool is not the system RAM (a discrete GPU; a Jetson's GPU shares it).
fn mimi_apart(mimi_device: MimiDevice, lm_pool_is_system_ram: bool) -> bool {
    mimi_device == MimiDevice::Cpu && !lm_pool_is_system_ram
}

/// Decides whether `need` can load next to `held` (the running model), only after
/// releasing it, or not at all (the error says why and what to change).
pub fn plan(
    need: &Footprint,
    held: Option<&Footprint>,
    free: Option<FreeMemory>,
) -> Result<Plan, String> {
    let Some(free) = free else {
        return Ok(Plan::Alongside); // cannot tell: try
    };
    if need.total() <= free.bytes {
        return Ok(Plan::Alongside);
    }
    let reclaim = held
        .filter(|h| h.system_ram == free.system_ram)
        .map_or(0, |h| h.total());
    if need.total() <= free.bytes + reclaim {
        return Ok(Plan::ReleaseFirst);
    }
    Err(format!(
        "the model needs {need} but only {:.2} GB {} free{}: use a smaller [model] context, a q8_0/q4 GGUF (moshid quantize), or free memory",
        gb(free.bytes),
        if free.system_ram { "of RAM is" } else { "of GPU memory is" },
        if reclaim > 0 {
            format!(" (plus {:.2} GB held by the running model)", gb(reclaim))
        } else {
            String::new()
        }
    ))
}

/// How many of `need.conversations` fit, when fewer than all do: the most (at least 1)
/// for which [`plan`] finds room. None when all fit (or nothing can be told).
pub fn fit_conversations(
    need: &Footprint,
    held: Option<&Footprint>,
    free: Option<FreeMemory>,
) -> Option<usize> {
    let want = need.conversations.max(1);
    if plan(need, held, free).is_ok() {
        return None;
    }
    let fits = (1..want)
        .rev()
        .find(|&n| plan(&need.with_conversations(n), held, free).is_ok());
    Some(fits.unwrap_or(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fp(gb: u64) -> Footprint {
        Footprint {
            weights: gb << 30,
            system_ram: true,
            ..Default::default()
        }
    }

    #[test]
    fn plans_by_free_memory_and_what_the_old_model_gives_back() {
        let free = |gb: u64| {
            Some(FreeMemory {
                bytes: gb << 30,
                system_ram: true,
            })
        };
        assert_eq!(plan(&fp(4), Some(&fp(4)), free(6)), Ok(Plan::Alongside));
        assert_eq!(plan(&fp(4), Some(&fp(4)), free(2)), Ok(Plan::ReleaseFirst));
        let e = plan(&fp(8), Some(&fp(4)), free(2)).unwrap_err();
        assert!(
            e.contains("smaller [model] context") && e.contains("held by the running"),
            "{e}"
        );
        // A discrete GPU's memory is not given back by releasing a CPU model.
        let gpu = Some(FreeMemory {
            bytes: 2 << 30,
            system_ram: false,
        });
        assert!(plan(&fp(4), Some(&fp(4)), gpu).is_err());
        assert_eq!(plan(&fp(4), None, None), Ok(Plan::Alongside));
    }

    #[test]
    fn a_mimi_stream_is_its_attention_caches_and_half_as_much_again() {
        // The released Mimi: 8 layers of 512 at context 250, encoder and decoder.
        let b = mimi_stream_bytes(&moshid_models::mimi::MimiConfig::v0_1());
        assert_eq!(b, 2 * 8 * 2 * 250 * 512 * 4 * 3 / 2);
        assert!((20_000_000..30_000_000).contains(&b), "{b}");
    }

    #[test]
    fn conversations_take_kv_and_mimi_state_each_and_capacity_shrinks_to_what_fits() {
        let one = Footprint {
            weights: 4 << 30,
            kv_cache: 1 << 30,
            mimi: 1 << 29,
            mimi_state: 1 << 28,
            ..fp(0)
        };
        let four = one.with_conversations(4);
        assert_eq!(
            four.total(),
            (4 << 30) + 4 * (1 << 30) + (1 << 29) + 4 * (1 << 28)
        );
        assert!(four.to_string().contains("x 4 conversations"), "{four}");
        let free = |b: u64| {
            Some(FreeMemory {
                bytes: b,
                system_ram: true,
            })
        };
        assert_eq!(fit_conversations(&four, None, free(four.total())), None);
        // Room for the weights and two conversations only.
        let two = one.with_conversations(2).total();
        assert_eq!(fit_conversations(&four, None, free(two + 1000)), Some(2));
        // Not even one: 1, and the load's own plan says why.
        assert_eq!(fit_conversations(&four, None, free(1 << 30)), Some(1));
    }

    #[test]
    fn mimi_on_the_cpu_is_counted_against_a_discrete_gpu_only_when_it_shares_the_pool() {
        assert!(mimi_apart(MimiDevice::Cpu, false));
        assert!(!mimi_apart(MimiDevice::Cpu, true)); // CPU LM, or a Jetson's shared RAM
        assert!(!mimi_apart(MimiDevice::Same, false));
        assert!(!mimi_apart(MimiDevice::Same, true));
        let mut need = Footprint {
            weights: 3 << 30,
            mimi: 1 << 30,
            ..fp(0)
        };
        let gpu = |gb: u64| {
            Some(FreeMemory {
                bytes: gb << 30,
                system_ram: false,
            })
        };
        assert!(plan(&need, None, gpu(3)).is_err());
        assert!(need.to_string().contains("+ Mimi 1.07 GB"), "{need}");
        need.mimi_apart = true;
        assert_eq!(need.total(), 3 << 30);
        assert_eq!(plan(&need, None, gpu(3)), Ok(Plan::Alongside));
        let shown = need.to_string();
        assert!(
            shown.starts_with("3.22 GB (weights 3.22 GB + KV cache 0.00 GB)")
                && shown.ends_with(", Mimi 1.07 GB of RAM beside"),
            "{shown}"
        );
    }
}

//! Tools that run beside the service, never inside it: `eval` (metrics from labelled
//! prompts), `fit` (thresholds tuned on them), `bench` (speed of the engine) and `tune`
//! (fine-tuning the encoder on the routes' utterances); `weights` lets `eval` and `fit` count
//! out-of-scope prompts as the share of traffic a deployment expects.

pub mod bench;
pub mod conversations;
pub mod eval;
pub mod fit;
pub mod tune;
pub mod weights;

//! Tools that run beside the service, never inside it: `eval` (metrics from labelled
//! prompts), `fit` (thresholds tuned on them), `bench` (speed of the engine) and `tune`
//! (fine-tuning the encoder on the routes' utterances).

pub mod bench;
pub mod conversations;
pub mod eval;
pub mod fit;
pub mod tune;

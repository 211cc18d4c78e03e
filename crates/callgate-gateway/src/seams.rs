//! Extension points of the pipeline that later capabilities fill in: response masking. (The
//! approval phase is [`crate::approvals`], credentials [`crate::credentials`], audit
//! [`crate::audit`].)
//!
//! Each trait sits at a fixed place in [`crate::pipeline`] and sees only the call model and the
//! decision, never protocol types. The defaults here are pass-throughs that do exactly what the
//! gateway did before the capability existed; none of them weakens a check made elsewhere.

use bytes::Bytes;
use callgate_core::Call;
use callgate_core::refusal::Refusal;
use callgate_policy::Decision;
use http::{HeaderMap, StatusCode};
use std::sync::Arc;

/// An upstream response on its way back to the caller.
#[derive(Debug, Clone)]
pub struct UpstreamResponse {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// Phase 10, mask: rewrites the response before the caller (or anything else) sees it.
pub trait ResponseMasker: Send + Sync {
    fn mask(
        &self,
        call: &Call,
        decision: &Decision,
        response: &mut UpstreamResponse,
    ) -> Result<(), Refusal>;
}

/// The pass-through implementation of every seam.
pub struct PassThrough;

impl ResponseMasker for PassThrough {
    fn mask(&self, _: &Call, _: &Decision, _: &mut UpstreamResponse) -> Result<(), Refusal> {
        Ok(())
    }
}

/// The seams a gateway runs with.
#[derive(Clone)]
pub struct Seams {
    pub masking: Arc<dyn ResponseMasker>,
}

impl Default for Seams {
    fn default() -> Self {
        let p = Arc::new(PassThrough);
        Seams { masking: p }
    }
}

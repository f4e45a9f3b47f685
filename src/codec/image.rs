//! Placeholder with the interface of the image codec being written on the
//! `image` branch; replaced by it before this lands.

use model_runtime::TensorSpec;

use super::{ErrorCode, Failure};
use crate::config::ImageSettings;

pub struct ImagePlan;

#[derive(Default)]
pub struct ImageScratch;

pub struct ImageInfo {
    pub format: &'static str,
    pub width: u32,
    pub height: u32,
}

impl ImagePlan {
    pub fn new(_settings: &ImageSettings, _input: &TensorSpec) -> Result<ImagePlan, String> {
        Ok(ImagePlan)
    }

    pub fn prepare(
        &self,
        _bytes: &[u8],
        _out: &mut [u8],
        _scratch: &mut ImageScratch,
    ) -> Result<ImageInfo, Failure> {
        Err(Failure::new(ErrorCode::BadImage, "not yet"))
    }
}

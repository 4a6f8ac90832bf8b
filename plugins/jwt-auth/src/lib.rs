//! `jwt-auth`: not written yet.
use transom_plugin_sdk::{Plugin, export_plugin};

pub struct Skeleton;

impl Plugin for Skeleton {}

export_plugin!(Skeleton);

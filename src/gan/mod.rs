//! CycleGAN (ResNet generator, PatchGAN discriminator, image pool) for growing small datasets.
//! The networks and their building blocks; training and generation commands build on these.

pub mod generate;
pub mod networks;
pub mod pool;
pub mod run;
pub mod train;

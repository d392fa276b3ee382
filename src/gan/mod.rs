//! CycleGAN (ResNet generator, PatchGAN discriminator, image pool) and the lesion painter built
//! from the same networks, for growing small datasets. The networks and their building blocks;
//! training and generation commands build on these.

pub mod generate;
pub mod networks;
pub mod paint;
pub mod painter;
pub mod pool;
pub mod run;
pub mod train;

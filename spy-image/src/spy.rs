//! The spy's main loop.

"""Motion correction: pure alignment and dose-weighting kernels, and the engines that run them."""

"""CTF estimation: pure spectrum and fitting kernels, and the engines that run them."""

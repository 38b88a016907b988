"""How a machine executes, apart from what is computed: devices and the pmap wrapping
(parallel), multi-process runs (distributed), the CPU split into one device per core
(host_devices), malloc tuning on CPU hosts (host_memory), JAX's on-disk compilation cache
(persistent_cache), compiled steps shared by the runs of one process (shared_steps), and
the measured choice of convolution kernel gradients on CPU (conv_choice).

Kept light: launch.py imports host_devices and host_memory before JAX, so this file
imports nothing.
"""

"""`python tests/launch.py N MODULE ARGS...`: `python -m MODULE ARGS` with
the CPU split into N logical devices, so `--strategy mirrored` runs N
replicas on a machine without GPUs (how tests/test_rehearsal.py rehearses
several GPUs). The split must happen before TensorFlow starts its
runtime, hence a launcher rather than a flag of the commands."""

import runpy
import sys

import tensorflow as tf

devices, module = int(sys.argv[1]), sys.argv[2]
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(
    cpu, [tf.config.LogicalDeviceConfiguration()] * devices
)
sys.argv = [module, *sys.argv[3:]]
runpy.run_module(module, run_name="__main__", alter_sys=True)

"""Learning-rate schedules (imported by `kerasbert.modeling`, so that `.keras`
files saved with their optimizer reload after `import kerasbert.modeling`)."""

import keras


@keras.saving.register_keras_serializable(package="kerasbert")
class WarmupLinearDecay(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up to `peak`, then linear decay to 0 at `total_steps`."""

    def __init__(self, peak, warmup_steps, total_steps):
        self.peak = peak
        self.warmup_steps = warmup_steps
        self.total_steps = total_steps

    def __call__(self, step):
        step = keras.ops.cast(step, "float32")
        warmup = keras.ops.maximum(float(self.warmup_steps), 1.0)
        decay = keras.ops.maximum(
            float(self.total_steps - self.warmup_steps), 1.0
        )
        up = (step + 1.0) / warmup
        down = (float(self.total_steps) - step) / decay
        factor = keras.ops.where(step < self.warmup_steps, up, down)
        return self.peak * keras.ops.clip(factor, 0.0, 1.0)

    def get_config(self):
        return {
            "peak": self.peak,
            "warmup_steps": self.warmup_steps,
            "total_steps": self.total_steps,
        }

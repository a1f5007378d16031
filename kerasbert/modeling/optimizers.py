"""AdamW with TensorFlow's fused Adam kernel (imported by `kerasbert.modeling`,
so that `.keras` files saved with their optimizer reload after
`import kerasbert.modeling`, as for the schedules)."""

import keras


@keras.saving.register_keras_serializable(package="kerasbert")
class FusedAdamW(keras.optimizers.AdamW):
    """Keras' AdamW (same arguments, variables, weight decay and clipping);
    under TensorFlow each variable's Adam update is TF's own fused kernel
    (`ResourceApplyAdam`, the one tf.keras 2 used): one multi-threaded pass
    over the variable and its two slots, where Keras' update is eight
    separate elementwise ops with a tensor written between each. The
    formula is Keras' (bias correction folded into the step size, epsilon
    outside the square root); the results agree to float32 rounding, not
    bit for bit (the kernel computes 1 - beta in float32). On a 2-core CPU
    this took a MiniLM fine-tuning step's optimizer from 75-100 to 47 ms
    (docs/performance.md).

    Keras' own update runs on other backends (JAX), with `amsgrad`, and for
    variables a tf.distribute strategy mirrors (the kernel updates one
    device's copy)."""

    def update_step(self, gradient, variable, learning_rate):
        if keras.backend.backend() != "tensorflow" or self.amsgrad:
            return super().update_step(gradient, variable, learning_rate)
        import tensorflow as tf

        index = self._get_variable_index(variable)
        var = (
            variable.value if isinstance(variable, keras.Variable) else variable
        )
        m = self._momentums[index].value
        v = self._velocities[index].value
        if any(
            isinstance(x, tf.distribute.DistributedValues)
            or not hasattr(x, "handle")
            for x in (var, m, v)
        ):
            return super().update_step(gradient, variable, learning_rate)
        dtype = var.dtype
        step = tf.cast(self.iterations + 1, dtype)
        beta_1 = tf.cast(self.beta_1, dtype)
        beta_2 = tf.cast(self.beta_2, dtype)
        tf.raw_ops.ResourceApplyAdam(
            var=var.handle,
            m=m.handle,
            v=v.handle,
            beta1_power=tf.pow(beta_1, step),
            beta2_power=tf.pow(beta_2, step),
            lr=tf.cast(learning_rate, dtype),
            beta1=beta_1,
            beta2=beta_2,
            epsilon=tf.cast(self.epsilon, dtype),
            # IndexedSlices (an embedding's gradient) become dense, as in
            # Keras' update.
            grad=tf.cast(tf.convert_to_tensor(gradient), dtype),
        )

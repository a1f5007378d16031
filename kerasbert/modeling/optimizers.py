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
    (docs/performance.md). The step's scalars (learning rate, beta powers)
    are made once per step, not once per variable, and a variable's
    weight decay runs just before its update: the same decay as Keras',
    with one run of the learning-rate schedule instead of one per decayed
    variable (an 18% smaller MiniLM training graph).

    Keras' own update runs on other backends (JAX), with `amsgrad`, and for
    variables a tf.distribute strategy mirrors (the kernel updates one
    device's copy)."""

    def _kernel_operands(self, variable):
        """(variable, m, v) as the resource variables TF's kernel updates,
        or None where Keras' update runs: not TensorFlow, amsgrad, outside
        `_backend_apply_gradients`, or a mirrored variable or slot."""
        if (
            keras.backend.backend() != "tensorflow"
            or self.amsgrad
            or getattr(self, "_scalars", None) is None
        ):
            return None
        import tensorflow as tf

        index = self._get_variable_index(variable)
        operands = (
            variable.value
            if isinstance(variable, keras.Variable)
            else variable,
            self._momentums[index].value,
            self._velocities[index].value,
        )
        if any(
            isinstance(x, tf.distribute.DistributedValues)
            or not hasattr(x, "handle")
            for x in operands
        ):
            return None
        return operands

    def _backend_apply_gradients(self, grads, trainable_variables):
        # This step's scalars (see update_step), made while it is traced.
        self._scalars = {}
        try:
            return super()._backend_apply_gradients(grads, trainable_variables)
        finally:
            self._scalars = None

    def _apply_weight_decay(self, variables):
        # The fused ones decay in update_step.
        super()._apply_weight_decay(
            [v for v in variables if self._kernel_operands(v) is None]
        )

    def update_step(self, gradient, variable, learning_rate):
        operands = self._kernel_operands(variable)
        if operands is None:
            return super().update_step(gradient, variable, learning_rate)
        import tensorflow as tf

        var, m, v = operands
        # The step's learning rate and beta powers, made once per step and
        # dtype: Keras makes them again for every variable and runs the
        # schedule again for every decayed one (~850 of a MiniLM training
        # graph's 4,825 ops, traced and optimised at every start).
        dtype = var.dtype
        if dtype not in self._scalars:
            step = tf.cast(self.iterations + 1, dtype)
            beta_1 = tf.cast(self.beta_1, dtype)
            beta_2 = tf.cast(self.beta_2, dtype)
            self._scalars[dtype] = {
                "lr": tf.cast(learning_rate, dtype),
                "beta1_power": tf.pow(beta_1, step),
                "beta2_power": tf.pow(beta_2, step),
                "beta1": beta_1,
                "beta2": beta_2,
                "epsilon": tf.cast(self.epsilon, dtype),
            }
        scalars = self._scalars[dtype]
        if self.weight_decay is not None and self._use_weight_decay(var):
            # Keras' decoupled decay, before the update as in Keras (each
            # variable's decay reads only that variable).
            wd = tf.cast(self.weight_decay, dtype)
            var.assign_sub(var * wd * scalars["lr"])
        tf.raw_ops.ResourceApplyAdam(
            var=var.handle,
            m=m.handle,
            v=v.handle,
            # IndexedSlices (an embedding's gradient) become dense, as in
            # Keras' update.
            grad=tf.cast(tf.convert_to_tensor(gradient), dtype),
            **scalars,
        )

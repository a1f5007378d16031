"""The fit plan: exact step counts across epochs and resumes."""


def plan_fit_calls(total_steps: int, steps_per_epoch: int, start_step: int):
    """Splits the remaining steps into `model.fit` calls.

    Keras replays an interrupted epoch from its first batch, so a resumed run
    cannot reuse one `fit(epochs=E)` call. Instead the remainder of the
    interrupted epoch, the full epochs, and a final short epoch each get
    their own call (`fit` needs one `steps_per_epoch` per call). Returns a
    list of `(initial_epoch, epochs, steps_per_epoch)`.
    """
    calls = []
    step = start_step
    while step < total_steps:
        epoch = step // steps_per_epoch
        epoch_end = min((epoch + 1) * steps_per_epoch, total_steps)
        length = epoch_end - step
        if (calls and step % steps_per_epoch == 0
                and calls[-1][2] == length == steps_per_epoch):
            first, _, _ = calls[-1]
            calls[-1] = (first, epoch + 1, length)
        else:
            calls.append((epoch, epoch + 1, length))
        step = epoch_end
    return calls

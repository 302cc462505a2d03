"""The engine: a bot's decisions made in time, across its two event loops.

On the I/O loop: :mod:`~callflow.engine.intake` takes each notification's events in
(unknown calls dropped, :mod:`~callflow.engine.dedupe` drops repeats and stale updates),
:mod:`~callflow.engine.admission` decides whether a new call is taken, the
:mod:`~callflow.engine.deadline` scheduler guarantees a decision before the platform's
timeout, and :mod:`~callflow.engine.outbox` sends every decision. On the app loop:
:mod:`~callflow.engine.lanes` runs handlers and observers per call. They meet only in
:mod:`~callflow.engine.crossing`. :class:`~callflow.engine.core.Engine` puts them together;
:class:`~callflow.engine.limits.Limits` bounds them.
"""

"""cineforge.sampling: flow-matching schedules, solvers over ``velocity(x, t)`` and guidance.

Typical use (t in [0, 1], 1 = noise; velocity receives a float32 ``(B,)`` tensor of times)::

    solver = get_solver("unipc")
    sigmas, times = solver.schedule(steps, shift)
    x = initial_noise(shape, generator, device=device)
    for step in solver.steps(velocity, x, sigmas, times):
        ...  # step.index, step.x, step.x0 (progress, previews, cancellation)
"""

from cineforge.sampling.guidance import classifier_free_guidance, guided_velocity
from cineforge.sampling.schedules import (
    euler_schedule,
    flash_schedule,
    flow_sigmas,
    shift_time,
    unipc_schedule,
)
from cineforge.sampling.solvers import (
    Solver,
    SolverStep,
    Velocity,
    euler_steps,
    flash_steps,
    frame_noise,
    get_solver,
    initial_noise,
    sample,
    solver_steps,
    unipc_steps,
)

__all__ = [
    "Solver",
    "SolverStep",
    "Velocity",
    "classifier_free_guidance",
    "euler_schedule",
    "euler_steps",
    "flash_schedule",
    "flash_steps",
    "flow_sigmas",
    "frame_noise",
    "get_solver",
    "guided_velocity",
    "initial_noise",
    "sample",
    "shift_time",
    "solver_steps",
    "unipc_schedule",
    "unipc_steps",
]

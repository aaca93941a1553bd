"""The app's "Demo" tab: pick a scripted scenario (app/scenarios.py), then play it step by step.
Each step shows what it should show, the reasoning levels, the items and how many satisfy the
active request. Built inside ``app.ui.build_app``'s Blocks; imports no torch."""

from __future__ import annotations

import gradio as gr

from app.scenarios import begin, bundled, load_scenario, play_step, step_markdown


def demo_tab(engine) -> None:
    """Add the Demo tab's components and events to the enclosing ``gr.Blocks``."""
    files = bundled()
    names = list(files)

    def outline(name: str) -> str:
        scenario = load_scenario(files[name])
        steps = "\n".join(f"{n}. " + (f"say “{s.say}”" if s.say is not None else f"{s.feedback} item {s.item}")
                          + f" — {s.expect}" for n, s in enumerate(scenario.steps, 1))
        return f"### {scenario.name}\n\n{scenario.description}\n\nStarts as **{scenario.user}**.\n\n{steps}"

    def start(name: str):
        scenario = load_scenario(files[name])
        state = {"name": name} | begin(engine, scenario)
        user = engine.sessions.get(state["session_id"]).user_id or "a fresh user"
        return (state, f"_Session started as {user}. Press **Next step**._",
                gr.update(interactive=True, value=f"Next step (1 of {len(scenario.steps)})"))

    def step(state: dict | None, shown: str):
        if not state:
            raise gr.Error("Start the scenario first.")
        scenario = load_scenario(files[state["name"]])
        try:
            outcome = play_step(engine, scenario, state)
        except (IndexError, ValueError) as error:
            raise gr.Error(str(error))
        left = len(scenario.steps) - state["next"]
        button = (gr.update(value=f"Next step ({state['next'] + 1} of {len(scenario.steps)})") if left
                  else gr.update(value="Scenario finished", interactive=False))
        so_far = "" if shown.startswith("_Session started") else shown
        return state, step_markdown(outcome) + ("\n---\n\n" + so_far if so_far else ""), button

    with gr.Tab("Demo"):
        gr.Markdown("Scripted scenarios that tell thinkrec's story. Pick one, start it, and step through; "
                    "each step says what it should show. Write your own as YAML (see README, Demo).")
        with gr.Row():
            picker = gr.Dropdown(names, value=names[0] if names else None, label="Scenario", elem_id="scenario-picker")
            start_button = gr.Button("Start scenario", elem_id="scenario-start")
            next_button = gr.Button("Next step", variant="primary", elem_id="scenario-next", interactive=False)
        summary = gr.Markdown(outline(names[0]) if names else "_No scenarios bundled._", elem_id="scenario-outline")
        steps = gr.Markdown("", elem_id="scenario-steps")
        play_state = gr.State(None)
        picker.change(outline, [picker], [summary])
        start_button.click(start, [picker], [play_state, steps, next_button])
        next_button.click(step, [play_state, steps], [play_state, steps, next_button])

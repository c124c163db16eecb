"""The experiment pipeline's own fan-in/out steps (seed_bank, arm_inputs, compare_arms):
not stages of the defense, the plumbing of the robustness sweep."""

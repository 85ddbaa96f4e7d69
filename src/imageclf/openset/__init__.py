""""None of these": the scores that tell known images from unknown ones (scores), the rule a
model folder stores (rule), and choosing it (calibrate). Pure functions of a model's outputs;
imports core only."""

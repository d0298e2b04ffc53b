"""`bench report`: statistics (summaries), figures, suite sections and the page builder."""

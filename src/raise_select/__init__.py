"""raise-select: RAISE (Reinforced Adaptive Instruction SElection) for LLM instruction tuning.

Data flows one way: pool + target -> features -> selector -> environment -> metrics -> report.
"""

__version__ = "0.1.0"

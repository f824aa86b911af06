"""EdgeOptimizer: QAT and TFLite variants of the trained detector, each scored."""

from components.edge_optimizer.component import EdgeEvaluation, EdgeOptimizer, TFLiteModel

__all__ = ["EdgeEvaluation", "EdgeOptimizer", "TFLiteModel"]

"""Consumer lag: committed and log-end offsets per partition, computed as Kafka computes them."""

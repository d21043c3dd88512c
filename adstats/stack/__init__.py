"""The local stack: Kafka (KRaft) and Cassandra as JVM processes from Maven-resolved jars."""

/* mpi_hello.c -- minimal MPI hello world for the qcg-hier Slurm/MPI tests.
 *
 * Prints one line per rank:  "rank R of N on NODE"
 * NODE is $SLURMD_NODENAME when set (all virtual Slurm nodes of the test
 * cluster share one host, so the host name alone cannot tell them apart),
 * otherwise the MPI processor name.
 *
 * Build:  mpicc.openmpi -o mpi_hello mpi_hello.c   (or mpicc.mpich)
 */
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>

int main(int argc, char **argv)
{
    int rank = 0, size = 0, len = 0;
    char procname[MPI_MAX_PROCESSOR_NAME];
    const char *node;

    MPI_Init(&argc, &argv);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    MPI_Get_processor_name(procname, &len);

    node = getenv("SLURMD_NODENAME");
    if (node == NULL || node[0] == '\0')
        node = procname;

    /* make sure every rank really talks to the others */
    int sum = 0;
    MPI_Allreduce(&rank, &sum, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
    if (sum != size * (size - 1) / 2) {
        fprintf(stderr, "rank %d: allreduce gave %d, expected %d\n",
                rank, sum, size * (size - 1) / 2);
        MPI_Abort(MPI_COMM_WORLD, 1);
    }

    printf("rank %d of %d on %s\n", rank, size, node);
    fflush(stdout);

    MPI_Finalize();
    return 0;
}
